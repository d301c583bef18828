//! Drawing the board: the title line, the tiles, the events pane and the key help, and the
//! report shown over them.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, BorderType, Clear, Gauge, Paragraph, Wrap};

use super::tiles::{Tile, tiles};
use super::{Board, duration};

/// A tile's size on the screen.
const TILE_W: u16 = 34;
const TILE_H: u16 = 7;

/// Draws the whole board.
pub(super) fn draw(f: &mut Frame, b: &Board) {
    // The tiles take the rows they need (at most the screen minus room for a few events), the
    // events pane the rest.
    let area = f.area();
    let n = b.status.as_ref().map_or(0, |s| s.bays.len()).max(1);
    let cols = (area.width / TILE_W).max(1) as usize;
    let rows = n.div_ceil(cols) as u16;
    let tiles_h = (rows * TILE_H).min(area.height.saturating_sub(1 + 7));
    let [head, body, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(tiles_h),
        Constraint::Min(5),
    ])
    .areas(area);
    let title = match (&b.unreachable, &b.status) {
        (Some((since, _)), _) => Line::from(vec![
            Span::styled(" tek board ", Style::new().add_modifier(Modifier::BOLD)),
            Span::styled(
                format!(
                    " agent unreachable for {}; reconnecting (its last answer is shown, greyed)",
                    duration(since.elapsed())
                ),
                Style::new().fg(Color::Red),
            ),
        ]),
        (None, Some(st)) => Line::from(vec![
            Span::styled(" tek board ", Style::new().add_modifier(Modifier::BOLD)),
            Span::raw(format!(" {}", st.summary)),
        ]),
        (None, None) => Line::from(" tek board  connecting to the agent..."),
    };
    f.render_widget(Paragraph::new(title), head);
    if let Some(st) = &b.status {
        draw_tiles(f, body, &tiles(st), b.selected, b.unreachable.is_some());
    }
    draw_foot(f, foot, b);
    if let Some((id, text, scroll)) = &b.report {
        let area = inset(f.area(), 4, 2);
        f.render_widget(Clear, area);
        f.render_widget(
            Paragraph::new(text.as_str())
                .wrap(Wrap { trim: false })
                .scroll((*scroll, 0))
                .block(
                    Block::bordered()
                        .title(format!(
                            " report of {id}  (arrows scroll, any other key closes) "
                        ))
                        .border_type(BorderType::Double),
                ),
            area,
        );
    }
}

fn draw_tiles(f: &mut Frame, area: Rect, tiles: &[Tile], selected: usize, stale: bool) {
    if tiles.is_empty() {
        f.render_widget(
            Paragraph::new("no bays configured (see `tek bays --discover`)"),
            area,
        );
        return;
    }
    let cols = (area.width / TILE_W).max(1) as usize;
    for (i, t) in tiles.iter().enumerate() {
        let (row, col) = ((i / cols) as u16, (i % cols) as u16);
        let r = Rect {
            x: area.x + col * TILE_W,
            y: area.y + row * TILE_H,
            width: TILE_W.min(area.width),
            height: TILE_H,
        };
        if r.bottom() > area.bottom() {
            break;
        }
        draw_tile(f, r, t, i == selected, stale);
    }
}

fn draw_tile(f: &mut Frame, r: Rect, t: &Tile, selected: bool, stale: bool) {
    let colour = if stale {
        Color::DarkGray
    } else {
        t.kind.colour()
    };
    let mut block = Block::bordered()
        .border_style(Style::new().fg(colour))
        .title(Line::from(vec![
            Span::styled(
                format!(" {} ", t.bay),
                Style::new().add_modifier(Modifier::BOLD),
            ),
            Span::styled(format!("{} ", t.kind.word()), Style::new().fg(colour)),
        ]));
    if selected {
        block = block.border_type(BorderType::Thick);
    }
    let inner = block.inner(r);
    f.render_widget(block, r);
    let mut lines = vec![Line::styled(t.state.clone(), Style::new().fg(colour))];
    if let Some((_, ticket, image)) = &t.job {
        lines.push(Line::from(format!("{ticket}  {image}")));
    }
    if let Some(d) = &t.disk {
        lines.push(Line::styled(d.clone(), Style::new().fg(Color::Gray)));
    }
    let [text, gauge] = Layout::vertical([Constraint::Min(1), Constraint::Length(1)]).areas(inner);
    f.render_widget(Paragraph::new(lines).wrap(Wrap { trim: true }), text);
    if let Some((phase, frac, eta)) = &t.progress {
        let eta = eta
            .map(|e| format!(", {} left", duration(e)))
            .unwrap_or_default();
        f.render_widget(
            Gauge::default()
                .gauge_style(Style::new().fg(colour))
                .ratio(*frac)
                .label(format!("{phase} {:.0}%{eta}", frac * 100.0)),
            gauge,
        );
    }
}

fn draw_foot(f: &mut Frame, area: Rect, b: &Board) {
    let [msg, events, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(area);
    let ask = b.confirm.as_ref().map(|c| {
        format!(
            "cancel job {} ({})? the staged data is kept [y/N]",
            c.ticket, c.job
        )
    });
    if let Some(m) = ask.as_ref().or(b.message.as_ref()) {
        f.render_widget(
            Paragraph::new(m.as_str()).style(Style::new().add_modifier(Modifier::BOLD)),
            msg,
        );
    }
    let lines: Vec<Line> = b.events.iter().map(|e| Line::from(e.as_str())).collect();
    f.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" events ")),
        events,
    );
    f.render_widget(
        Paragraph::new(" \u{2190}\u{2192} select bay   c cancel   r retry   enter report   q quit")
            .style(Style::new().fg(Color::Gray)),
        keys,
    );
}

fn inset(r: Rect, dx: u16, dy: u16) -> Rect {
    Rect {
        x: r.x + dx.min(r.width / 2),
        y: r.y + dy.min(r.height / 2),
        width: r.width.saturating_sub(2 * dx),
        height: r.height.saturating_sub(2 * dy),
    }
}
