//! Running a real containerd (a bundle's own) in a test: started with a given config, stopped by
//! PID when dropped, with `ctr` helpers.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Containerd {
    child: Child,
    pub bin: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Containerd {
    /// Start `bin/containerd --config config` with `bin` first on PATH (for the shim), and wait up to
    /// 30 s for it to answer on `socket`.
    pub fn start(bin: &Path, config: &Path, socket: &Path, log: &Path) -> Containerd {
        let mut cmd = Command::new(bin.join("containerd"));
        cmd.arg("--config").arg(config);
        Self::spawn(cmd, bin, socket, log)
    }

    /// Like [`Containerd::start`], in a private mount namespace without the cgroup v2 hierarchy
    /// that a hybrid cgroup host mounts at `/sys/fs/cgroup/unified`. crun refuses hybrid mode when
    /// that hierarchy has controllers ("cgroups in hybrid mode not supported"), which is how this
    /// test host is set up; real nodes run either pure v1 or pure v2.
    pub fn start_without_unified_cgroup(bin: &Path, config: &Path, socket: &Path, log: &Path) -> Containerd {
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg("if mountpoint -q /sys/fs/cgroup/unified; then umount /sys/fs/cgroup/unified; fi; exec \"$0\" \"$@\"")
            .arg(bin.join("containerd"))
            .arg("--config")
            .arg(config);
        Self::spawn(cmd, bin, socket, log)
    }

    /// The containerd of an activated tree: `rendered` (the bundle's config.toml) is written to
    /// `root/config.toml` with every node path moved under `root` (see [`redirect`]), and
    /// `current/bin/containerd` starts on it; socket `root/run/containerd/containerd.sock`, log
    /// `root/containerd.log`.
    pub fn start_rendered(root: &Path, current: &Path, rendered: &str) -> Containerd {
        let (config, socket, log) = Self::rendered_paths(root, rendered);
        Self::start(&current.join("bin"), &config, &socket, &log)
    }

    /// [`Containerd::start_rendered`] without the unified cgroup hierarchy (see
    /// [`Containerd::start_without_unified_cgroup`]).
    pub fn start_rendered_without_unified_cgroup(root: &Path, current: &Path, rendered: &str) -> Containerd {
        let (config, socket, log) = Self::rendered_paths(root, rendered);
        Self::start_without_unified_cgroup(&current.join("bin"), &config, &socket, &log)
    }

    fn rendered_paths(root: &Path, rendered: &str) -> (PathBuf, PathBuf, PathBuf) {
        let config = root.join("config.toml");
        std::fs::write(&config, redirect(rendered, root)).unwrap();
        (
            config,
            root.join("run/containerd/containerd.sock"),
            root.join("containerd.log"),
        )
    }

    fn spawn(mut cmd: Command, bin: &Path, socket: &Path, log: &Path) -> Containerd {
        let child = cmd
            .env("PATH", format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin.display()))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("containerd starts");
        let c = Containerd {
            child,
            bin: bin.to_path_buf(),
            socket: socket.to_path_buf(),
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(socket.exists() && c.ctr(&["version"]).status.success()) {
            assert!(
                Instant::now() < deadline,
                "containerd did not come up:\n{}",
                c.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new(self.bin.join("ctr"))
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "kiln-test"])
            .args(args)
            .output()
            .unwrap()
    }

    /// The status column of the CRI plugin in `ctr plugins ls`.
    pub fn cri_status(&self) -> String {
        let plugins = String::from_utf8_lossy(&self.ctr(&["plugins", "ls"]).stdout).into_owned();
        let line = plugins
            .lines()
            .find(|l| l.starts_with("io.containerd.grpc.v1") && l.contains(" cri "))
            .unwrap_or_default();
        line.split_whitespace().last().unwrap_or_default().to_string()
    }

    /// Import a busybox image and run `echo` in it with `runc`; returns the container's stdout.
    pub fn run_echo(&self, work: &Path, runc: &Path, message: &str) -> String {
        let image = work.join("busybox.oci.tar");
        std::fs::write(
            &image,
            crate::oci::busybox_image(Path::new("/bin/busybox"), "docker.io/kiln/busybox:test"),
        )
        .unwrap();
        let imported = self.ctr(&["images", "import", image.to_str().unwrap()]);
        assert!(
            imported.status.success(),
            "import: {}",
            String::from_utf8_lossy(&imported.stderr)
        );
        let run = self.ctr(&[
            "run",
            "--rm",
            "--runc-binary",
            runc.to_str().unwrap(),
            "docker.io/kiln/busybox:test",
            "kiln-c1",
            "/bin/busybox",
            "echo",
            message,
        ]);
        assert!(
            run.status.success(),
            "run: {}\n{}",
            String::from_utf8_lossy(&run.stderr),
            self.log_text()
        );
        String::from_utf8_lossy(&run.stdout).trim().to_string()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node config with its absolute node paths moved under `root` (the test's stand-in for `/`).
pub fn redirect(config: &str, root: &Path) -> String {
    let r = root.display();
    config
        .replace("/var/lib/kiln/", &format!("{r}/var/lib/kiln/"))
        .replace("/var/lib/containerd", &format!("{r}/var/lib/containerd"))
        .replace("/run/containerd", &format!("{r}/run/containerd"))
        .replace("/etc/cni/net.d", &format!("{r}/etc/cni/net.d"))
}
