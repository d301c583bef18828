//! `tek board`: the bench's live board, a full-screen terminal view of every bay for the
//! technician at the bench. One tile per bay, coloured by what its disk is doing (empty, waiting,
//! refused with the reason, running with phase, progress and ETA, done and safe to remove,
//! failed with the reason), the job's ticket and image, and the agent's last events at the
//! bottom. Keys act on the selected bay's job: cancel (asks first), retry, show its report.
//!
//! It talks only to the agent's Unix socket (no network listener): one connection polls the
//! status snapshot, another streams events; both reconnect when the agent restarts, and the
//! board says when the agent is unreachable instead of showing stale states as live.

mod draw;
mod tiles;

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use agent::server::client::Client;
use agent::server::protocol::{Event, Op, Status};
use anyhow::Result;
use ratatui::crossterm::event::{self, Event as TermEvent, KeyCode, KeyEventKind, KeyModifiers};

pub(crate) use tiles::event_line;
use tiles::{Tile, TileKind, tile};

pub(crate) use super::clock::duration;
use super::clock::now_hms;

/// How often the status snapshot is fetched.
const POLL: Duration = Duration::from_millis(500);
/// Events kept for the bottom pane.
const EVENTS_KEPT: usize = 50;

/// A message from the background connections.
enum Msg {
    Status(Status),
    Unreachable(String),
    Event(Event),
}

/// A question waiting for y/n.
struct Confirm {
    job: String,
    ticket: String,
}

struct Board {
    socket: PathBuf,
    status: Option<Status>,
    /// Since when the agent has not answered (None while it answers).
    unreachable: Option<(Instant, String)>,
    selected: usize,
    events: VecDeque<String>,
    /// The disks the events pane lists (in a bay, or wanted by a job): the others, outside every
    /// bay and ignored, come and go unlisted, as in `tek status --watch` without `--all`.
    listed: HashSet<String>,
    /// The answer to the last key (an action's result), shown above the events.
    message: Option<String>,
    confirm: Option<Confirm>,
    /// A report shown over the board: (job id, text, scroll).
    report: Option<(String, String, u16)>,
}

/// Runs the board until `q`/Esc/Ctrl-C.
pub fn run(socket: &Path) -> Result<()> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() {
        anyhow::bail!("tek board needs a terminal (for a one-shot view use `tek status`)");
    }
    let (tx, rx) = mpsc::channel();
    spawn_poller(socket.to_path_buf(), tx.clone());
    spawn_events(socket.to_path_buf(), tx);
    let mut board = Board {
        socket: socket.to_path_buf(),
        status: None,
        unreachable: None,
        selected: 0,
        events: VecDeque::new(),
        listed: HashSet::new(),
        message: None,
        confirm: None,
        report: None,
    };
    let mut term = ratatui::init();
    let res = (|| -> Result<()> {
        loop {
            while let Ok(m) = rx.try_recv() {
                board.apply(m);
            }
            term.draw(|f| draw::draw(f, &board))?;
            if event::poll(Duration::from_millis(100))?
                && let TermEvent::Key(k) = event::read()?
                && k.kind == KeyEventKind::Press
            {
                let ctrl_c =
                    k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                if ctrl_c || !board.key(k.code) {
                    return Ok(());
                }
            }
        }
    })();
    ratatui::restore();
    res
}

fn spawn_poller(socket: PathBuf, tx: mpsc::Sender<Msg>) {
    std::thread::spawn(move || {
        let mut client: Option<Client> = None;
        loop {
            let got = match client.as_mut() {
                Some(c) => c.call::<Status>(Op::Status),
                None => Client::connect(&socket).and_then(|mut c| {
                    let st = c.call::<Status>(Op::Status);
                    client = Some(c);
                    st
                }),
            };
            let msg = match got {
                Ok(st) => Msg::Status(st),
                Err(e) => {
                    client = None;
                    Msg::Unreachable(agent::errors::text(&e))
                }
            };
            if tx.send(msg).is_err() {
                return;
            }
            std::thread::sleep(POLL);
        }
    });
}

fn spawn_events(socket: PathBuf, tx: mpsc::Sender<Msg>) {
    std::thread::spawn(move || {
        loop {
            if let Ok(events) = Client::connect(&socket).and_then(|c| c.subscribe()) {
                for e in events {
                    let Ok(line) = e else { break };
                    if tx.send(Msg::Event(line)).is_err() {
                        return;
                    }
                }
            }
            // The agent went away: the poller reports it; try again in a second.
            std::thread::sleep(Duration::from_secs(1));
        }
    });
}

impl Board {
    fn apply(&mut self, m: Msg) {
        match m {
            Msg::Status(st) => {
                if let Some((since, _)) = self.unreachable.take() {
                    self.push_event(format!(
                        "agent reachable again after {}",
                        duration(since.elapsed())
                    ));
                }
                self.selected = self.selected.min(st.bays.len().saturating_sub(1));
                self.listed.extend(
                    st.disks
                        .iter()
                        .filter(|d| super::status::listed(d, false))
                        .map(|d| d.disk.name.clone()),
                );
                self.status = Some(st);
            }
            Msg::Unreachable(why) => {
                if self.unreachable.is_none() {
                    self.push_event(format!("agent unreachable: {why}"));
                    self.unreachable = Some((Instant::now(), why));
                }
            }
            Msg::Event(e) => {
                if let Some(line) = super::status::watched_line(&e, &mut self.listed, false) {
                    self.push_event(line);
                }
            }
        }
    }

    fn push_event(&mut self, line: String) {
        let now = now_hms();
        self.events.push_front(format!("{now}  {line}"));
        self.events.truncate(EVENTS_KEPT);
    }

    fn selected_tile(&self) -> Option<Tile> {
        let st = self.status.as_ref()?;
        st.bays.get(self.selected).map(|b| tile(st, b))
    }

    /// Handles one key; false to quit.
    fn key(&mut self, code: KeyCode) -> bool {
        if let Some((_, _, scroll)) = &mut self.report {
            match code {
                KeyCode::Down | KeyCode::Char('j') => *scroll = scroll.saturating_add(1),
                KeyCode::Up | KeyCode::Char('k') => *scroll = scroll.saturating_sub(1),
                KeyCode::PageDown | KeyCode::Char(' ') => *scroll = scroll.saturating_add(10),
                KeyCode::PageUp => *scroll = scroll.saturating_sub(10),
                _ => self.report = None,
            }
            return true;
        }
        if let Some(c) = self.confirm.take() {
            self.message = Some(match code {
                KeyCode::Char('y') | KeyCode::Char('Y') => self.act(
                    Op::JobCancel { id: c.job.clone() },
                    &format!("cancelled job {} ({})", c.ticket, c.job),
                ),
                _ => format!("job {} ({}) left running", c.ticket, c.job),
            });
            return true;
        }
        let bays = self.status.as_ref().map_or(0, |s| s.bays.len());
        match code {
            KeyCode::Char('q') | KeyCode::Esc => return false,
            KeyCode::Right | KeyCode::Tab | KeyCode::Char('l') | KeyCode::Down if bays > 0 => {
                self.selected = (self.selected + 1) % bays;
            }
            KeyCode::Left | KeyCode::BackTab | KeyCode::Char('h') | KeyCode::Up if bays > 0 => {
                self.selected = (self.selected + bays - 1) % bays;
            }
            KeyCode::Char('c') => match self.selected_tile() {
                Some(Tile {
                    job: Some((id, ticket, _)),
                    kind: TileKind::Running,
                    ..
                }) => {
                    self.confirm = Some(Confirm { job: id, ticket });
                }
                Some(t) => self.message = Some(format!("bay {}: no running job to cancel", t.bay)),
                None => {}
            },
            KeyCode::Char('r') => match self.selected_tile() {
                Some(Tile {
                    job: Some((id, ticket, _)),
                    kind: TileKind::Failed | TileKind::Refused,
                    ..
                }) => {
                    self.message = Some(self.act(
                        Op::JobRetry { id: id.clone() },
                        &format!("retrying job {ticket} ({id})"),
                    ));
                }
                Some(t) => self.message = Some(format!("bay {}: no failed job to retry", t.bay)),
                None => {}
            },
            KeyCode::Enter | KeyCode::Char('s') => {
                let job = self
                    .selected_tile()
                    .and_then(|t| t.job)
                    .and_then(|(id, _, _)| {
                        self.status
                            .as_ref()?
                            .jobs
                            .iter()
                            .find(|j| j.id.as_str() == id)
                            .cloned()
                    });
                match job {
                    Some(j) => {
                        let lh = client_data::Letterhead::default();
                        let text = agent::job::report::Report::of(&j).to_text(&lh);
                        self.report = Some((j.id.to_string(), text, 0));
                    }
                    None => self.message = Some("no job in this bay".into()),
                }
            }
            _ => {}
        }
        true
    }

    /// Sends `op`; `done` on success, else the agent's answer.
    fn act(&self, op: Op, done: &str) -> String {
        match Client::connect(&self.socket).and_then(|mut c| c.request(op)) {
            Ok(_) => done.to_string(),
            Err(e) => format!("refused: {}", agent::errors::Chain(&e)),
        }
    }
}
