//! Privileged operations behind a trait: systemd, kernel modules, sysctl, mounting the cidata
//! filesystem and the verity image, and the health probes. [`Host`] does them for real
//! (`systemctl`, `modprobe`, `sysctl`, `veritysetup`, `mount`); [`Recording`] records them, for
//! tests and for activating into a root that is not the running system (`--root` while building
//! an image).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use kiln_bundle::verity::VerityRecord;

/// Why this node cannot mount a verity image (no device-mapper, no dm-verity target, no
/// veritysetup); the bundle is unpacked instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NoVerity(pub String);

pub trait System {
    fn daemon_reload(&mut self) -> Result<()>;
    fn enable(&mut self, unit: &str) -> Result<()>;
    fn start(&mut self, unit: &str) -> Result<()>;
    /// Queue a start without waiting for it (the unit may be ordered after the caller).
    fn queue_start(&mut self, unit: &str) -> Result<()>;
    fn restart(&mut self, unit: &str) -> Result<()>;
    fn is_active(&mut self, unit: &str) -> bool;
    fn load_module(&mut self, name: &str) -> Result<()>;
    fn apply_sysctl(&mut self, file: &Path) -> Result<()>;
    /// Set the running system's host name (the kernel's; /etc/hostname is written separately).
    fn set_hostname(&mut self, name: &str) -> Result<()>;
    /// Mount a filesystem labelled cidata/CIDATA read-only and return where, if there is one.
    fn mount_cidata(&mut self, root: &Path) -> Result<Option<PathBuf>>;
    /// containerd answers on its socket.
    fn containerd_healthy(&mut self, socket: &Path, timeout: Duration) -> Result<()>;
    /// kubelet's healthz answers `ok`.
    fn kubelet_healthy(&mut self, timeout: Duration) -> Result<()>;
    /// The Node registered and Ready, as kubelet's own credentials under `root` see it.
    fn node_joined(&mut self, root: &Path, node: &crate::state::NodeJoin) -> Result<()>;
    /// Whether this node can mount a verity image; the reason when it cannot.
    fn verity_support(&mut self) -> std::result::Result<(), NoVerity>;
    /// Open dm-verity device `name` over `image` (root hash and offset from `record`) and mount
    /// its filesystem read-only at `target`, an empty directory.
    fn mount_verity(&mut self, image: &Path, record: &VerityRecord, name: &str, target: &Path) -> Result<()>;
    /// Whether a filesystem is mounted at `target`.
    fn is_mounted(&mut self, target: &Path) -> bool;
    fn stop(&mut self, unit: &str) -> Result<()>;
    fn disable(&mut self, unit: &str) -> Result<()>;
    fn mask(&mut self, unit: &str) -> Result<()>;
    fn unmask(&mut self, unit: &str) -> Result<()>;
    /// `systemctl is-enabled`'s word for `unit`: enabled, disabled, static, masked, not-found, ...
    fn unit_file_state(&mut self, unit: &str) -> String;
}

/// Run a command, failing with its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        let what = format!("`{}`", kiln_bundle::process::command_line(cmd));
        bail!("{}", kiln_bundle::process::failed(&what, out.status, &out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The running machine. External tools: systemctl, systemd-sysctl, modprobe, blkid, mount (systemd,
/// kmod and util-linux; nothing from procps, which minimal images lack).
pub struct Host {
    pub kubelet_healthz: String,
}

impl Default for Host {
    fn default() -> Self {
        Host {
            kubelet_healthz: "http://127.0.0.1:10248/healthz".into(),
        }
    }
}

impl System for Host {
    fn daemon_reload(&mut self) -> Result<()> {
        run(Command::new("systemctl").arg("daemon-reload")).map(drop)
    }
    fn enable(&mut self, unit: &str) -> Result<()> {
        run(Command::new("systemctl").args(["enable", unit])).map(drop)
    }
    fn start(&mut self, unit: &str) -> Result<()> {
        run(Command::new("systemctl").args(["start", unit])).map(drop)
    }
    fn queue_start(&mut self, unit: &str) -> Result<()> {
        run(Command::new("systemctl").args(["start", "--no-block", unit])).map(drop)
    }
    fn restart(&mut self, unit: &str) -> Result<()> {
        run(Command::new("systemctl").args(["restart", unit])).map(drop)
    }
    fn is_active(&mut self, unit: &str) -> bool {
        Command::new("systemctl")
            .args(["is-active", "--quiet", unit])
            .status()
            .is_ok_and(|s| s.success())
    }
    fn load_module(&mut self, name: &str) -> Result<()> {
        run(Command::new("modprobe").arg(name)).map(drop)
    }
    fn apply_sysctl(&mut self, file: &Path) -> Result<()> {
        // systemd's own applier, present wherever systemd is (procps's sysctl may not be).
        run(Command::new("/usr/lib/systemd/systemd-sysctl").arg(file)).map(drop)
    }
    fn set_hostname(&mut self, name: &str) -> Result<()> {
        std::fs::write("/proc/sys/kernel/hostname", name).context("cannot set the host name")
    }
    fn mount_cidata(&mut self, _root: &Path) -> Result<Option<PathBuf>> {
        for label in ["cidata", "CIDATA"] {
            let Ok(dev) = run(Command::new("blkid").args(["-L", label])) else {
                continue;
            };
            let dev = dev.trim();
            if dev.is_empty() {
                continue;
            }
            let dir = PathBuf::from("/run/kiln/cidata");
            // Mounted by an earlier run in this boot (kiln-firstboot run by hand after the unit).
            if self.is_mounted(&dir) {
                return Ok(Some(dir));
            }
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            run(Command::new("mount").args(["-o", "ro"]).arg(dev).arg(&dir))?;
            return Ok(Some(dir));
        }
        Ok(None)
    }
    fn containerd_healthy(&mut self, socket: &Path, timeout: Duration) -> Result<()> {
        poll(timeout, || {
            std::os::unix::net::UnixStream::connect(socket)
                .map(drop)
                .map_err(|e| anyhow!("{}: {e}", socket.display()))
        })
    }
    fn node_joined(&mut self, root: &Path, node: &crate::state::NodeJoin) -> Result<()> {
        let unit = kiln_bundle::layout::units::KUBELET;
        let before = restarts(unit);
        wait_joined(root, node, &mut || crash_looping(unit, before))
    }
    fn verity_support(&mut self) -> std::result::Result<(), NoVerity> {
        // Built in, or a module: modprobe is a no-op for the former.
        let module = run(Command::new("modprobe").arg("dm_verity"));
        if !Path::new("/dev/mapper/control").exists() {
            return Err(NoVerity(
                "the kernel has no device-mapper (/dev/mapper/control does not exist)".into(),
            ));
        }
        if let Err(e) = module {
            if !Path::new("/sys/module/dm_verity").exists() {
                return Err(NoVerity(format!("the kernel has no dm-verity target: {e:#}")));
            }
        }
        run(Command::new("veritysetup").arg("--version"))
            .map(drop)
            .map_err(|e| NoVerity(format!("veritysetup (Debian's cryptsetup-bin) is not usable: {e:#}")))
    }
    fn mount_verity(&mut self, image: &Path, record: &VerityRecord, name: &str, target: &Path) -> Result<()> {
        let device = Path::new("/dev/mapper").join(name);
        if device.exists() {
            // Left by a run that stopped between opening and mounting.
            run(Command::new("veritysetup").args(["close", name]))?;
        }
        run(Command::new("veritysetup")
            .arg("open")
            .arg(image)
            .arg(name)
            .arg(image)
            .arg(&record.root_hash)
            .arg(format!("--hash-offset={}", record.data_size)))?;
        let mounted = run(Command::new("mount")
            .args(["-t", &record.filesystem, "-o", "ro"])
            .arg(&device)
            .arg(target));
        if let Err(e) = mounted {
            let _ = run(Command::new("veritysetup").args(["close", name]));
            return Err(e);
        }
        Ok(())
    }
    fn is_mounted(&mut self, target: &Path) -> bool {
        mounted_at(
            &std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
            target,
        )
    }
    fn stop(&mut self, unit: &str) -> Result<()> {
        run(Command::new("systemctl").args(["stop", unit])).map(drop)
    }
    fn disable(&mut self, unit: &str) -> Result<()> {
        run(Command::new("systemctl").args(["disable", unit])).map(drop)
    }
    fn mask(&mut self, unit: &str) -> Result<()> {
        run(Command::new("systemctl").args(["mask", unit])).map(drop)
    }
    fn unmask(&mut self, unit: &str) -> Result<()> {
        run(Command::new("systemctl").args(["unmask", unit])).map(drop)
    }
    fn unit_file_state(&mut self, unit: &str) -> String {
        // It exits non-zero for every state but enabled; the word on stdout is the answer.
        Command::new("systemctl")
            .args(["is-enabled", unit])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "not-found".into())
    }
    fn kubelet_healthy(&mut self, timeout: Duration) -> Result<()> {
        let http = crate::net::Http::new(Duration::from_secs(2), 0);
        let url = self.kubelet_healthz.clone();
        poll(timeout, || {
            let body = http.request("GET", &url, &[]).map_err(|e| anyhow!("{e}"))?;
            if body.trim_ascii() == b"ok" {
                Ok(())
            } else {
                Err(anyhow!("{url} answered {:?}", String::from_utf8_lossy(&body)))
            }
        })
    }
}

/// Wait for kubelet's kubeconfig (written after its TLS bootstrap) and the Node's Ready condition.
/// While there is no kubeconfig, the bootstrap credentials are checked every few seconds, and a
/// token the API server refuses fails at once: waiting cannot fix it.
/// This boot's ID as the kernel reports it (`/proc` under `root`), the one kubelet reports in its
/// Node's status; `None` where `root` has no `/proc` (a test's node root).
fn this_boot(root: &Path) -> Result<Option<String>> {
    let path = root.join("proc/sys/kernel/random/boot_id");
    match std::fs::read_to_string(&path) {
        Ok(id) => Ok(Some(id.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !root.join("proc/self").exists() => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read this boot's ID from {}", path.display())),
    }
}

/// A kubelet systemd has restarted this many times while its Node is awaited will not become
/// Ready by waiting (a flag it cannot parse, a configuration it refuses): the wait ends early.
pub const CRASH_LOOP_RESTARTS: u32 = 4;

/// systemd's restart count of `unit` (`NRestarts`), 0 when it cannot say.
fn restarts(unit: &str) -> u32 {
    Command::new("systemctl")
        .args(["show", "-p", "NRestarts", "--value", unit])
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(0)
}

/// Why `unit` will not come up, once systemd has restarted it [`CRASH_LOOP_RESTARTS`] times since
/// the count was `before`.
fn crash_looping(unit: &str, before: u32) -> Option<String> {
    let n = restarts(unit).saturating_sub(before);
    (n >= CRASH_LOOP_RESTARTS).then(|| {
        format!("{unit} keeps exiting: systemd restarted it {n} times while the Node was awaited (`journalctl -u {unit}` says why)")
    })
}

/// `crash` answers why kubelet will never make the Node Ready (it keeps exiting), checked every
/// few seconds.
fn wait_joined(root: &Path, node: &crate::state::NodeJoin, crash: &mut dyn FnMut() -> Option<String>) -> Result<()> {
    use crate::node::{diagnose, node_ready, reconcile_labels, reported_since, Kubeconfig};
    let layout = kiln_bundle::layout::Layout::default();
    let kubeconfig = node
        .kubeconfig
        .clone()
        .unwrap_or_else(|| format!("{}/{}", layout.kubelet_root, crate::node::KUBELET_KUBECONFIG));
    let bootstrap = layout.on_node(kiln_bundle::layout::files::KUBELET_BOOTSTRAP, true);
    let timeout = Duration::from_secs(node.timeout_s);
    let boot_id = this_boot(root)?;
    // Checked: a timeout from an old state file may predate the bound user data has now.
    let deadline = Instant::now()
        .checked_add(timeout)
        .with_context(|| format!("join timeout {}s is too long", node.timeout_s))?;
    let mut next_diagnosis = Instant::now() + Duration::from_secs(5);
    let mut next_crash_check = Instant::now() + Duration::from_secs(5);
    let mut last = anyhow!("not checked yet");
    // What the API server said to the bootstrap credentials, the likeliest cause while kubelet has
    // no kubeconfig.
    let mut cause: Option<String> = None;
    while Instant::now() < deadline {
        match Kubeconfig::load(root, &kubeconfig) {
            Ok(kc) => {
                cause = None;
                let fresh = |n: serde_json::Value| match &node.since {
                    Some(since) => reported_since(&n, since).map(|()| n),
                    None => Ok(n),
                };
                match node_ready(&kc, &node.name, boot_id.as_deref())
                    .and_then(fresh)
                    .and_then(|n| reconcile_labels(&kc, &n, &node.labels))
                {
                    Ok(changed) => {
                        if !changed.is_empty() {
                            // kubelet applies --node-labels only when it creates the Node.
                            eprintln!(
                                "kiln-firstboot: Node {} existed before this boot; set {}",
                                node.name,
                                changed.join(", ")
                            );
                        }
                        return Ok(());
                    }
                    Err(e) if e.is::<crate::node::Refused>() => bail!("{e:#}"),
                    Err(e) => last = e,
                }
            }
            Err(_) => {
                last = anyhow!("kubelet has not completed its TLS bootstrap ({kubeconfig} does not exist)");
                if Instant::now() >= next_diagnosis {
                    next_diagnosis = Instant::now() + Duration::from_secs(10);
                    cause = Kubeconfig::load(root, &bootstrap).ok().as_ref().and_then(diagnose);
                    if let Some(why) = cause.as_deref().filter(|w| w.contains("refused the bootstrap token")) {
                        bail!("Node {} cannot join: {why}", node.name);
                    }
                }
            }
        }
        if Instant::now() >= next_crash_check {
            next_crash_check = Instant::now() + Duration::from_secs(5);
            if let Some(why) = crash() {
                bail!("Node {} will not become Ready: {why}", node.name);
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    match cause {
        Some(why) => bail!(
            "Node {} did not become Ready within {}s: {why} ({last:#})",
            node.name,
            node.timeout_s
        ),
        None => bail!(
            "Node {} did not become Ready within {}s: {last:#}",
            node.name,
            node.timeout_s
        ),
    }
}

/// Whether `mountinfo` (the kernel's `/proc/self/mountinfo`) lists a mount at `target`. Its mount
/// points escape space, tab, newline and backslash as octal.
pub fn mounted_at(mountinfo: &str, target: &Path) -> bool {
    let want = target.to_string_lossy();
    mountinfo.lines().any(|l| {
        l.split(' ').nth(4).is_some_and(|m| {
            m.replace("\\040", " ")
                .replace("\\011", "\t")
                .replace("\\012", "\n")
                .replace("\\134", "\\")
                == want
        })
    })
}

/// Retry `check` until it succeeds or `timeout` passes; the last error explains the failure.
pub fn poll(timeout: Duration, mut check: impl FnMut() -> Result<()>) -> Result<()> {
    let deadline = Instant::now()
        .checked_add(timeout)
        .with_context(|| format!("timeout {timeout:?} is too long"))?;
    loop {
        match check() {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e.context(format!("not healthy after {timeout:?}"))),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Records every call; services become active when started. Health answers are configurable.
#[derive(Debug, Default)]
pub struct Recording {
    pub calls: Vec<String>,
    pub active: BTreeSet<String>,
    /// Bundle versions (read from the `current` link) whose services fail their health check.
    pub unhealthy_versions: BTreeSet<String>,
    /// Bundle versions whose services fail to start at all (a binary that cannot be read).
    pub unstartable_versions: BTreeSet<String>,
    pub root: PathBuf,
    /// A directory to mount as the cidata filesystem.
    pub cidata: Option<PathBuf>,
    /// Why this "node" cannot do dm-verity, if it cannot.
    pub no_verity: Option<String>,
    /// Where verity images were "mounted".
    pub mounted: BTreeSet<PathBuf>,
    /// `systemctl is-enabled` of units the test set up (absent: not-found); enable, disable, mask
    /// and unmask change it.
    pub unit_files: std::collections::BTreeMap<String, String>,
    /// Check the Node as [`Host`] does, against the API server the kubeconfig under the root names
    /// (tests with a real control plane), once the recorded health allows.
    pub node_api: bool,
}

impl Recording {
    pub fn new(root: &Path) -> Recording {
        Recording {
            root: root.to_path_buf(),
            ..Default::default()
        }
    }

    fn startable(&mut self, unit: &str) -> Result<()> {
        let v = self.current_version();
        if self.unstartable_versions.contains(&v) {
            self.active.remove(unit);
            bail!("Job for {unit} failed because the control process exited with error code (bundle {v})");
        }
        Ok(())
    }

    fn current_version(&self) -> String {
        std::fs::read_link(self.root.join(crate::activate::CURRENT))
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default()
    }
}

impl System for Recording {
    fn daemon_reload(&mut self) -> Result<()> {
        self.calls.push("daemon-reload".into());
        Ok(())
    }
    fn enable(&mut self, unit: &str) -> Result<()> {
        self.calls.push(format!("enable {unit}"));
        self.unit_files.insert(unit.into(), "enabled".into());
        Ok(())
    }
    fn start(&mut self, unit: &str) -> Result<()> {
        self.calls.push(format!("start {unit}"));
        self.startable(unit)?;
        self.active.insert(unit.into());
        Ok(())
    }
    fn queue_start(&mut self, unit: &str) -> Result<()> {
        self.calls.push(format!("queue-start {unit}"));
        self.active.insert(unit.into());
        Ok(())
    }
    fn restart(&mut self, unit: &str) -> Result<()> {
        self.calls.push(format!("restart {unit}"));
        self.startable(unit)?;
        self.active.insert(unit.into());
        Ok(())
    }
    fn is_active(&mut self, unit: &str) -> bool {
        self.active.contains(unit)
    }
    fn load_module(&mut self, name: &str) -> Result<()> {
        self.calls.push(format!("modprobe {name}"));
        Ok(())
    }
    fn set_hostname(&mut self, name: &str) -> Result<()> {
        self.calls.push(format!("hostname {name}"));
        Ok(())
    }
    fn apply_sysctl(&mut self, file: &Path) -> Result<()> {
        self.calls.push(format!(
            "sysctl -p /{}",
            file.strip_prefix(&self.root).unwrap_or(file).display()
        ));
        Ok(())
    }
    fn mount_cidata(&mut self, _root: &Path) -> Result<Option<PathBuf>> {
        Ok(self.cidata.clone())
    }
    fn containerd_healthy(&mut self, _socket: &Path, _timeout: Duration) -> Result<()> {
        let v = self.current_version();
        self.calls.push(format!("health containerd ({v})"));
        if self.unhealthy_versions.contains(&v) {
            bail!("containerd of bundle {v} does not answer on its socket");
        }
        Ok(())
    }
    fn kubelet_healthy(&mut self, _timeout: Duration) -> Result<()> {
        let v = self.current_version();
        self.calls.push(format!("health kubelet ({v})"));
        if self.unhealthy_versions.contains(&v) {
            bail!("kubelet of bundle {v} is not healthy");
        }
        Ok(())
    }
    fn node_joined(&mut self, root: &Path, node: &crate::state::NodeJoin) -> Result<()> {
        let v = self.current_version();
        self.calls.push(format!("health node {} ({v})", node.name));
        if self.unhealthy_versions.contains(&v) {
            bail!("Node {} of bundle {v} is not Ready", node.name);
        }
        if self.node_api {
            return wait_joined(root, node, &mut || None);
        }
        Ok(())
    }
    fn verity_support(&mut self) -> std::result::Result<(), NoVerity> {
        match &self.no_verity {
            Some(why) => Err(NoVerity(why.clone())),
            None => Ok(()),
        }
    }
    /// What the kernel would do at each read, done at once in userspace: `veritysetup verify`
    /// checks every block against the root hash, then `fsck.erofs --extract` puts the files where
    /// the mount would show them.
    fn mount_verity(&mut self, image: &Path, record: &VerityRecord, name: &str, target: &Path) -> Result<()> {
        let shown = |p: &Path| format!("/{}", p.strip_prefix(&self.root).unwrap_or(p).display());
        self.calls.push(format!(
            "veritysetup open {} {name} (root hash {}) && mount -o ro {}",
            shown(image),
            record.root_hash,
            shown(target)
        ));
        run(Command::new("veritysetup")
            .arg("verify")
            .arg(image)
            .arg(image)
            .arg(&record.root_hash)
            .arg(format!("--hash-offset={}", record.data_size)))?;
        // fsck.erofs reads the filesystem's own size from its superblock: the hash tree after it
        // is left alone.
        run(Command::new("fsck.erofs")
            .arg(format!("--extract={}", target.display()))
            .arg(image))?;
        self.mounted.insert(target.to_path_buf());
        Ok(())
    }
    fn is_mounted(&mut self, target: &Path) -> bool {
        self.mounted.contains(target)
    }
    fn stop(&mut self, unit: &str) -> Result<()> {
        self.calls.push(format!("stop {unit}"));
        self.active.remove(unit);
        Ok(())
    }
    fn disable(&mut self, unit: &str) -> Result<()> {
        self.calls.push(format!("disable {unit}"));
        if let Some(s) = self.unit_files.get_mut(unit).filter(|s| *s == "enabled") {
            *s = "disabled".into();
        }
        Ok(())
    }
    fn mask(&mut self, unit: &str) -> Result<()> {
        self.calls.push(format!("mask {unit}"));
        self.unit_files.insert(unit.into(), "masked".into());
        Ok(())
    }
    fn unmask(&mut self, unit: &str) -> Result<()> {
        self.calls.push(format!("unmask {unit}"));
        if let Some(s) = self.unit_files.get_mut(unit).filter(|s| *s == "masked") {
            *s = "disabled".into();
        }
        Ok(())
    }
    fn unit_file_state(&mut self, unit: &str) -> String {
        self.unit_files.get(unit).cloned().unwrap_or_else(|| "not-found".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_read_from_mountinfo_with_their_escapes() {
        let info = "36 35 98:0 / /mnt1 rw,noatime master:1 - ext3 /dev/root rw\n\
                    37 35 253:0 / /var/lib/kiln/bundles/1.0.0 ro,relatime - erofs /dev/mapper/kiln-1.0.0 ro\n\
                    38 35 0:5 / /a\\040b rw - tmpfs tmpfs rw\n";
        assert!(mounted_at(info, Path::new("/var/lib/kiln/bundles/1.0.0")));
        assert!(mounted_at(info, Path::new("/a b")));
        assert!(!mounted_at(info, Path::new("/var/lib/kiln/bundles")));
        assert!(!mounted_at(info, Path::new("/mnt")));
    }
}
