//! The audit's rules (version [`super::RULES_VERSION`]): what in a filesystem tree means the
//! image is populated. Walkers call [`Rules::visit`] for every entry (paths from the
//! filesystem's root, `/`-separated; matched case-insensitively, as Windows does), and
//! [`Rules::finish`] once the walk is complete (rules about something *missing* fire there).

use super::{AuditOptions, Finding, Kind, Severity, deep};

/// Profile folders Windows keeps in an unpopulated image.
const SYSTEM_PROFILES: [&str; 4] = ["default", "default user", "public", "all users"];
/// Files `/etc/skel` puts into a new home; a home holding only these is a skeleton.
const SKELETON: [&str; 4] = [".bashrc", ".profile", ".bash_logout", ".cshrc"];
/// Per-user folders whose files are a person's documents.
const USER_FOLDERS: [&str; 7] = [
    "documents",
    "desktop",
    "pictures",
    "downloads",
    "videos",
    "music",
    "onedrive",
];
/// Findings of one rule in one partition beyond which only a count is kept.
const PER_RULE_CAP: usize = 100;

/// Reads up to `n` bytes of the entry being visited.
pub type ReadHead<'a> = dyn FnMut(usize) -> Result<Vec<u8>, String> + 'a;

/// Rule state for one partition.
pub struct Rules {
    partition: u32,
    deep: bool,
    max_read: usize,
    findings: Vec<Finding>,
    capped: std::collections::BTreeMap<&'static str, u64>,
    has_windows: bool,
    state_ini: Option<bool>,
    var_log: u64,
    homes_flagged: std::collections::BTreeSet<String>,
    /// The first file whose contents a rule needed and the reader could not give.
    unreadable: Option<String>,
}

impl Rules {
    /// Rules for partition `partition`.
    pub fn new(partition: u32, opts: &AuditOptions) -> Rules {
        Rules {
            partition,
            deep: opts.deep,
            max_read: opts.limits.max_file_read,
            findings: Vec::new(),
            capped: Default::default(),
            has_windows: false,
            state_ini: None,
            var_log: 0,
            homes_flagged: Default::default(),
            unreadable: None,
        }
    }

    /// Up to `n` bytes of the entry at `path`; a read that fails is remembered (the first one)
    /// and ends the partition's audit with an error ([`Rules::unreadable`]): a file the rules
    /// could not look into is not a file they found clean.
    fn head(&mut self, read: &mut ReadHead<'_>, n: usize, path: &str) -> Option<Vec<u8>> {
        match read(n) {
            Ok(b) => Some(b),
            Err(e) => {
                if self.unreadable.is_none() {
                    self.unreadable = Some(format!("reading {path}: {e}"));
                }
                None
            }
        }
    }

    /// The first failed read of a file's contents, if any (see [`Rules::head`]).
    pub fn unreadable(&self) -> Option<&str> {
        self.unreadable.as_deref()
    }

    fn add(&mut self, sev: Severity, path: &str, rule: &'static str, detail: String) {
        if self.findings.iter().filter(|f| f.rule == rule).count() >= PER_RULE_CAP {
            *self.capped.entry(rule).or_default() += 1;
            return;
        }
        self.findings
            .push(Finding::new(sev, self.partition, path, rule, detail));
    }

    /// Checks one entry. `read` gives up to n bytes of its contents (files only).
    pub fn visit(&mut self, path: &str, kind: Kind, size: u64, read: &mut ReadHead<'_>) {
        let lower = path.to_lowercase();
        let comps: Vec<&str> = lower.trim_start_matches('/').split('/').collect();
        let name = *comps.last().unwrap_or(&"");
        let file = kind == Kind::File;
        let max = self.max_read;
        use Severity::*;

        // --- Windows ---
        if lower == "/windows/system32" && kind == Kind::Dir {
            self.has_windows = true;
        }
        if comps.len() >= 2 && comps[0] == "users" && !SYSTEM_PROFILES.contains(&comps[1]) {
            if comps.len() == 2 && kind == Kind::Dir {
                self.add(Personal, path, "win.profile", "a user profile".into());
            }
            if comps.len() == 3 && name == "ntuser.dat" {
                self.add(
                    Personal,
                    path,
                    "win.ntuser",
                    "a user's registry hive".into(),
                );
            }
            if comps.len() >= 4 && file && USER_FOLDERS.contains(&comps[2]) {
                self.add(Personal, path, "user.documents", format!("{size} bytes"));
            }
        }
        // A user's hive outside \Users: the profile root can be moved (ProfilesDirectory), and
        // a hive is a person's wherever it sits. Windows' own service and system profiles live
        // under \Windows (ServiceProfiles, System32\config\systemprofile).
        if file && name == "ntuser.dat" && comps[0] != "users" && comps[0] != "windows" {
            self.add(
                Personal,
                path,
                "win.ntuser",
                "a user's registry hive outside \\Users (a moved profile root?)".into(),
            );
        }
        if lower == "/windows/setup/state/state.ini" && file {
            let generalized = self
                .head(read, 64 << 10, path)
                .map(|b| {
                    String::from_utf8_lossy(&b).lines().any(|l| {
                        let l = l.trim().to_ascii_lowercase().replace(' ', "");
                        l == "imagestate=image_state_generalize_reseal_to_oobe"
                    })
                })
                .unwrap_or(false);
            self.state_ini = Some(generalized);
        }
        if file
            && (matches!(
                lower.as_str(),
                "/pagefile.sys" | "/hiberfil.sys" | "/swapfile.sys" | "/windows/memory.dmp"
            ) || lower.starts_with("/windows/minidump/"))
        {
            self.add(
                Personal,
                path,
                "win.memory",
                format!("{size} bytes of memory"),
            );
        }
        if comps.first() == Some(&"windows.old") && comps.len() == 1 {
            self.add(
                Personal,
                path,
                "win.windows-old",
                "a previous installation".into(),
            );
        }
        if comps.first() == Some(&"$recycle.bin") && file && name != "desktop.ini" {
            self.add(Personal, path, "win.recycle-bin", "a deleted file".into());
        }
        if file && lower.contains("/microsoft/windows/recent/") && name != "desktop.ini" {
            self.add(Personal, path, "win.recent", "a recent item".into());
        }
        if file
            && lower.starts_with("/programdata/microsoft/wlansvc/profiles/")
            && self
                .head(read, max, path)
                .map(|b| contains(&b, b"keyMaterial"))
                .unwrap_or(false)
        {
            self.add(Risk, path, "win.wifi-key", "a Wi-Fi key".into());
        }

        // --- browsers and mail (any system) ---
        let in_chromium = lower.contains("/user data/")
            || lower.contains("/.config/google-chrome/")
            || lower.contains("/.config/chromium/");
        if file
            && ((in_chromium && matches!(name, "history" | "login data" | "cookies" | "web data"))
                || matches!(name, "places.sqlite" | "logins.json" | "cookies.sqlite"))
        {
            self.add(Personal, path, "browser.profile", "browser data".into());
        }
        if file && (name.ends_with(".pst") || name.ends_with(".ost")) {
            self.add(
                Personal,
                path,
                "mail.store",
                format!("{size} bytes of mail"),
            );
        }
        if kind == Kind::Dir
            && (lower.ends_with("/thunderbird/profiles") || lower.ends_with("/.thunderbird"))
        {
            self.add(Personal, path, "mail.store", "a Thunderbird profile".into());
        }
        if file
            && size > 0
            && (name == "mbox"
                || lower.starts_with("/var/mail/")
                || lower.starts_with("/var/spool/mail/"))
        {
            self.add(
                Personal,
                path,
                "mail.store",
                format!("{size} bytes of mail"),
            );
        }

        // --- Linux ---
        if comps.len() >= 3
            && comps[0] == "home"
            && kind != Kind::Dir
            && !(comps.len() == 3 && SKELETON.contains(&name))
            && self.homes_flagged.insert(comps[1].to_string())
        {
            let home = format!(
                "/{}",
                path.trim_start_matches('/')
                    .split('/')
                    .take(2)
                    .collect::<Vec<_>>()
                    .join("/")
            );
            self.add(
                Personal,
                &home,
                "linux.home",
                "a home beyond the skeleton".into(),
            );
        }
        if file && size > 0 && (name.ends_with("_history") || name == ".history") {
            self.add(Personal, path, "shell.history", format!("{size} bytes"));
        }
        if file
            && size > 0
            && matches!(
                lower.as_str(),
                "/etc/machine-id" | "/var/lib/dbus/machine-id"
            )
        {
            let set = self
                .head(read, 256, path)
                .map(|b| {
                    let t = String::from_utf8_lossy(&b);
                    let t = t.trim();
                    !t.is_empty() && t != "uninitialized"
                })
                .unwrap_or(true);
            if set {
                self.add(Risk, path, "linux.machine-id", "a machine id is set".into());
            }
        }
        if file && lower.starts_with("/etc/ssh/ssh_host_") && name.ends_with("_key") {
            self.add(
                Risk,
                path,
                "linux.ssh-host-key",
                "an SSH host private key".into(),
            );
        }
        if file && size > 0 && (name == "authorized_keys" || name == "authorized_keys2") {
            self.add(Risk, path, "ssh.authorized-keys", "SSH access keys".into());
        }
        if file
            && lower.starts_with("/etc/networkmanager/system-connections/")
            && self
                .head(read, max, path)
                .map(|b| {
                    let t = String::from_utf8_lossy(&b).to_ascii_lowercase();
                    t.lines().any(|l| {
                        let l = l.trim_start();
                        ["psk=", "password=", "wep-key0=", "secret="]
                            .iter()
                            .any(|k| l.starts_with(k))
                    })
                })
                .unwrap_or(false)
        {
            self.add(Risk, path, "linux.nm-secret", "a network secret".into());
        }
        if file && size > 0 && lower.starts_with("/var/log/") {
            self.var_log += 1;
        }

        // --- deep ---
        if self.deep
            && file
            && size > 0
            && deep::text_like(name)
            && !deep::packaged_software(&lower)
        {
            if let Some(b) = self.head(read, max, path) {
                let counts = deep::scan(&b);
                if counts.total() > 0 {
                    self.add(Personal, path, "deep.personal-data", counts.describe());
                }
            }
        }
    }

    /// Findings once the whole tree was walked (adds the rules about what is missing).
    pub fn finish(mut self) -> Vec<Finding> {
        if self.has_windows && self.state_ini != Some(true) {
            let detail = match self.state_ini {
                None => "State.ini is missing: not generalized with sysprep",
                Some(_) => "ImageState is not IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE",
            };
            self.add(
                Severity::Risk,
                "/Windows/Setup/State/State.ini",
                "win.not-generalized",
                detail.into(),
            );
        }
        self.finish_partial()
    }

    /// Findings so far (a walk that failed part-way: nothing is concluded from absence).
    pub fn finish_partial(mut self) -> Vec<Finding> {
        if self.var_log > 0 {
            let n = self.var_log;
            self.add(
                Severity::Risk,
                "/var/log",
                "linux.var-log",
                format!("{n} non-empty log file(s)"),
            );
        }
        for (rule, n) in std::mem::take(&mut self.capped) {
            self.findings.push(Finding::new(
                Severity::Info,
                self.partition,
                "",
                rule,
                format!("{n} more finding(s) of this rule not listed"),
            ));
        }
        self.findings
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(entries: &[(&str, Kind, &[u8])]) -> Vec<Finding> {
        let mut r = Rules::new(3, &AuditOptions::default());
        for (p, k, data) in entries {
            r.visit(p, *k, data.len() as u64, &mut |n| {
                Ok(data[..n.min(data.len())].to_vec())
            });
        }
        r.finish()
    }

    #[test]
    fn generalized_windows_with_default_profiles_is_clean() {
        let f = run(&[
            ("/Windows/System32", Kind::Dir, b""),
            ("/Users/Default", Kind::Dir, b""),
            ("/Users/Default/NTUSER.DAT", Kind::File, b"x"),
            ("/Users/Public/Desktop/desktop.ini", Kind::File, b"x"),
            (
                "/Windows/Setup/State/State.ini",
                Kind::File,
                b"[State]\r\nImageState=IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE\r\n",
            ),
        ]);
        assert!(f.is_empty(), "{f:?}");
    }

    #[test]
    fn missing_state_ini_and_a_profile_are_found() {
        let f = run(&[
            ("/Windows/System32", Kind::Dir, b""),
            ("/Users/jsmith", Kind::Dir, b""),
            ("/Users/jsmith/NTUSER.DAT", Kind::File, b"x"),
        ]);
        let rules: Vec<&str> = f.iter().map(|f| f.rule.as_str()).collect();
        assert_eq!(rules, ["win.profile", "win.ntuser", "win.not-generalized"]);
    }

    #[test]
    fn a_hive_under_a_moved_profile_root_is_found_and_system_ones_are_not() {
        let f = run(&[
            ("/Windows/System32", Kind::Dir, b""),
            (
                "/Windows/System32/config/systemprofile/NTUSER.DAT",
                Kind::File,
                b"x",
            ),
            (
                "/Windows/ServiceProfiles/LocalService/NTUSER.DAT",
                Kind::File,
                b"x",
            ),
            ("/Profiles/Jane/NTUSER.DAT", Kind::File, b"x"),
            (
                "/Windows/Setup/State/State.ini",
                Kind::File,
                b"ImageState=IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE\r\n",
            ),
        ]);
        let found: Vec<(&str, &str)> = f
            .iter()
            .map(|f| (f.rule.as_str(), f.path.as_str()))
            .collect();
        assert_eq!(found, [("win.ntuser", "/Profiles/Jane/NTUSER.DAT")]);
    }

    #[test]
    fn linux_rules() {
        let f = run(&[
            ("/etc/machine-id", Kind::File, b"0123456789abcdef\n"),
            ("/etc/ssh/ssh_host_ed25519_key", Kind::File, b"k"),
            ("/etc/ssh/ssh_host_ed25519_key.pub", Kind::File, b"k"),
            ("/home/ann/.bashrc", Kind::File, b"x"),
            ("/home/bob/.bash_history", Kind::File, b"ls"),
            (
                "/etc/NetworkManager/system-connections/home.nmconnection",
                Kind::File,
                b"[wifi-security]\npsk=hunter22\n",
            ),
            ("/var/log/syslog", Kind::File, b"x"),
        ]);
        let rules: Vec<&str> = f.iter().map(|f| f.rule.as_str()).collect();
        assert_eq!(
            rules,
            [
                "linux.machine-id",
                "linux.ssh-host-key",
                "linux.home",
                "shell.history",
                "linux.nm-secret",
                "linux.var-log"
            ]
        );
        assert_eq!(f[2].path, "/home/bob");
        // An empty machine-id (as systemd images ship) is fine.
        assert!(run(&[("/etc/machine-id", Kind::File, b"")]).is_empty());
    }
}
