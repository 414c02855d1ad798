//! Booting a node image under QEMU for tests: q35 + OVMF (UEFI), software emulation, the disk as a
//! snapshot (the image stays untouched), the serial console to a file, and a NoCloud seed disk for
//! the user data. The guest gets no network, or a restricted user-mode network whose only way out
//! is `guestfwd` to services the test names on the host's loopback. QEMU is stopped by PID when the
//! [`Vm`] is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where a guest reaches the test API server: forwarded (`guestfwd`) to the host's loopback.
/// QEMU refuses to forward 10.0.2.2, the host's own address in the guest's network.
pub const GUEST_API_IP: &str = "10.0.2.100";
pub const GUEST_API: &str = "10.0.2.100:6443";

/// The guest's network.
#[derive(Debug, Clone, Default)]
pub enum Net {
    /// `-nic none`.
    #[default]
    None,
    /// `-netdev user,restrict=on`: DHCP gives the guest 10.0.2.15/24 and no default route;
    /// each `(guest address:port, host loopback port)` is forwarded (`guestfwd`) through a
    /// per-connection relay to 127.0.0.1, and nothing else leaves the guest.
    Restricted { forwards: Vec<(String, u16)> },
}

#[derive(Debug, Clone)]
pub struct Options {
    pub memory_mib: u32,
    pub cpus: u32,
    pub net: Net,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            memory_mib: 1024,
            cpus: 2,
            net: Net::None,
        }
    }
}

/// Where the serial console of VM `name` goes.
pub fn serial_log(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.serial.log"))
}

/// What a VM boots from.
#[derive(Debug, Clone)]
pub enum Boot<'a> {
    /// A raw disk (as a snapshot) and a NoCloud seed disk.
    Disk { disk: &'a Path, seed: &'a Path },
    /// The network, with no disk: OVMF runs iPXE (the NIC's option ROM from Debian's ipxe-qemu),
    /// which takes the address and `bootfile` from slirp's DHCP and fetches it from slirp's TFTP
    /// server, which serves `tftp`. Needs [`Net::Restricted`].
    Network { tftp: &'a Path, bootfile: &'a str },
}

/// The QEMU command line for VM `name` booting `disk` with `seed` (its OVMF variables copied into
/// `dir`).
pub fn command(dir: &Path, name: &str, disk: &Path, seed: &Path, opts: &Options) -> Command {
    command_for(dir, name, &Boot::Disk { disk, seed }, opts)
}

/// The QEMU command line for VM `name` booting from `boot`.
pub fn command_for(dir: &Path, name: &str, boot: &Boot, opts: &Options) -> Command {
    let vars = dir.join(format!("{name}.OVMF_VARS.fd"));
    std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars)
        .expect("/usr/share/OVMF/OVMF_VARS_4M.fd (scripts/setup installs ovmf)");
    let log = serial_log(dir, name);
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-machine", "q35", "-accel", "tcg,thread=multi", "-cpu", "max"])
        .arg("-smp")
        .arg(opts.cpus.to_string())
        .arg("-m")
        .arg(opts.memory_mib.to_string())
        .args(["-nodefaults", "-display", "none", "-no-reboot"]);
    match &opts.net {
        Net::None => {
            assert!(
                matches!(boot, Boot::Disk { .. }),
                "a network boot needs Net::Restricted"
            );
            cmd.args(["-nic", "none"]);
        }
        Net::Restricted { forwards } => {
            let mut netdev = "user,id=n0,restrict=on".to_string();
            if let Boot::Network { tftp, bootfile } = boot {
                // slirp's DHCP and TFTP answer inside the restricted network.
                netdev.push_str(&format!(",tftp={},bootfile={bootfile}", tftp.display()));
            }
            for (guest, port) in forwards {
                // QEMU starts the relay for each connection the guest opens, with the connection
                // as its stdin and stdout.
                netdev.push_str(&format!(",guestfwd=tcp:{guest}-cmd:socat STDIO TCP:127.0.0.1:{port}"));
            }
            cmd.arg("-netdev").arg(netdev);
            if let Boot::Network { .. } = boot {
                assert!(
                    Path::new(IPXE_ROM).is_file(),
                    "{IPXE_ROM} is missing (scripts/setup installs ipxe-qemu)"
                );
                cmd.args(["-device", &format!("virtio-net-pci,netdev=n0,romfile={IPXE_ROM}")]);
            } else {
                cmd.args(["-device", "virtio-net-pci,netdev=n0"]);
            }
        }
    }
    cmd.arg("-drive")
        .arg("if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd")
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,unit=1,file={}", vars.display()));
    if let Boot::Disk { disk, seed } = boot {
        cmd.arg("-drive")
            .arg(format!("if=virtio,format=raw,snapshot=on,file={}", disk.display()))
            .arg("-drive")
            .arg(format!("if=virtio,format=raw,readonly=on,file={}", seed.display()));
    }
    cmd.arg("-serial").arg(format!("file:{}", log.display()));
    cmd
}

/// iPXE as the virtio NIC's option ROM (UEFI and BIOS), from Debian's ipxe-qemu.
pub const IPXE_ROM: &str = "/usr/lib/ipxe/qemu/efi-virtio.rom";

pub struct Vm {
    child: Child,
    pub name: String,
    pub log: PathBuf,
    pub started: Instant,
}

impl Vm {
    /// Boot `disk` (raw) with the NoCloud `seed` under `dir`; files are named after `name`.
    pub fn boot(dir: &Path, name: &str, disk: &Path, seed: &Path, opts: &Options) -> Vm {
        Vm::start(dir, name, &Boot::Disk { disk, seed }, opts)
    }

    /// Boot from `boot` under `dir`; files are named after `name`.
    pub fn start(dir: &Path, name: &str, boot: &Boot, opts: &Options) -> Vm {
        let mut cmd = command_for(dir, name, boot, opts);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{name}.qemu.log"))).unwrap());
        let child = cmd
            .spawn()
            .expect("qemu-system-x86_64 (scripts/setup installs it from bookworm-backports)");
        Vm {
            child,
            name: name.to_string(),
            log: serial_log(dir, name),
            started: Instant::now(),
        }
    }

    pub fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// The last `n` lines of the console, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        let console = self.console();
        let lines: Vec<&str> = console.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Whether QEMU is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Wait until the console has a line containing `needle`; that line. Panics with the end of
    /// the console after `timeout`, or when QEMU exits first.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            // Only whole lines: the guest may be in the middle of writing the last one.
            let console = self.console();
            let whole = console.rfind('\n').map_or("", |end| &console[..end]);
            if let Some(line) = whole.lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            assert!(
                self.running(),
                "{}: QEMU exited before `{needle}` appeared:\n{}",
                self.name,
                self.tail(80)
            );
            assert!(
                Instant::now() < deadline,
                "{}: `{needle}` did not appear on the console within {timeout:?}; serial log ({}):\n{}",
                self.name,
                self.log.display(),
                self.tail(80)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Wait until the guest powers off (QEMU exits); the console. Panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "{}: qemu failed ({status}):\n{}",
                    self.name,
                    self.tail(80)
                );
                return self.console();
            }
            assert!(
                Instant::now() < deadline,
                "{}: the guest did not finish within {timeout:?}; serial log ({}):\n{}",
                self.name,
                self.log.display(),
                self.tail(80)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stop QEMU by PID.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A NoCloud seed: a FAT filesystem labelled CIDATA with `user-data` and `meta-data`.
pub fn nocloud_seed(dir: &Path, name: &str, user_data: &str, meta_data: &str) -> PathBuf {
    let work = dir.join(format!("{name}.seed.d"));
    std::fs::create_dir_all(&work).unwrap();
    let img = dir.join(format!("{name}.seed.img"));
    std::fs::File::create(&img).unwrap().set_len(4 << 20).unwrap();
    let ok = |cmd: &mut Command| {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/setup installs dosfstools and mtools)"));
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(Command::new("mkfs.vfat").args(["-n", "CIDATA"]).arg(&img));
    std::fs::write(work.join("user-data"), user_data).unwrap();
    std::fs::write(work.join("meta-data"), meta_data).unwrap();
    ok(Command::new("mcopy")
        .arg("-i")
        .arg(&img)
        .arg(work.join("user-data"))
        .arg(work.join("meta-data"))
        .arg("::/"));
    img
}
