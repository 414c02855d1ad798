//! Benchmark for `kiln-firstboot` (issue: first-boot activation), run by `just bench`: activate a
//! ~300 MB bundle with full verification into a temporary root, against `zstd -dc BUNDLE | tar -x`
//! of the same bundle, in the same run. Prints both, the ratio, peak RSS and the no-op re-run time.
//!
//! Usage: bench-activate PATH/TO/kiln PATH/TO/kiln-firstboot [RUNS]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use kiln_testkit::bench::{median, run, timed_rss};
use kiln_testkit::mirror::Mirror;
use kiln_testkit::standin;

const NODE: &str = "apiServer: https://10.0.0.1:6443\nclusterCA: x\nbootstrapToken: abcdef.0123456789abcdef\nnodeIP: 10.0.0.5\nhostname: bench\nclusterDNS: 10.96.0.10\n";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let kiln = abs(args.get(1).expect("usage: bench-activate KILN FIRSTBOOT [RUNS]"));
    let firstboot = abs(args.get(2).expect("usage: bench-activate KILN FIRSTBOOT [RUNS]"));
    let runs: usize = args.get(3).and_then(|r| r.parse().ok()).unwrap_or(3);
    let tmp = tempfile::tempdir_in(std::env::var("KILN_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into())).unwrap();
    let dir = tmp.path().to_path_buf();
    let dir = dir.as_path();

    eprintln!("bench: building a full-size bundle ...");
    let mirror = Mirror::start();
    let m = standin::production_manifest(dir, &mirror, "amd64", 1.0);
    let out = dir.join("out");
    let mut build = vec![
        "build".to_string(),
        m.display().to_string(),
        "-o".into(),
        out.display().to_string(),
    ];
    build.extend(standin::mirror_flags(&mirror.url()));
    run(Command::new(&kiln).args(&build).env("KILN_CACHE", dir.join("cache")));
    let bundle = out.join("k8s-node-1.36.4-1-amd64.kiln.tar.zst");
    let bundle_size = std::fs::metadata(&bundle).unwrap().len();

    let mut act = Vec::new();
    let mut rss = 0u64;
    let mut base = Vec::new();
    let mut noop = Vec::new();
    for i in 0..runs {
        let root = dir.join(format!("root{i}"));
        prepare_root(&root, &bundle);
        let (secs, kb) = timed_rss(
            Command::new("/usr/bin/time")
                .arg("-f")
                .arg("%e %M")
                .arg(&firstboot)
                .arg("--root")
                .arg(&root)
                .args(["run", "--system", "record"]),
        );
        act.push(secs);
        rss = rss.max(kb);
        for _ in 0..5 {
            let t = Instant::now();
            let out = run(Command::new(&firstboot)
                .arg("--root")
                .arg(&root)
                .args(["run", "--system", "record"]));
            noop.push(t.elapsed().as_secs_f64());
            let _ = out;
        }
        std::fs::remove_dir_all(&root).unwrap();

        let x = dir.join(format!("x{i}"));
        std::fs::create_dir(&x).unwrap();
        let t = Instant::now();
        run(Command::new("sh")
            .arg("-c")
            .arg("zstd -dc \"$1\" | tar -x -C \"$2\"")
            .arg("sh")
            .arg(&bundle)
            .arg(&x));
        base.push(t.elapsed().as_secs_f64());
        std::fs::remove_dir_all(&x).unwrap();
    }
    if std::env::var_os("KILN_BENCH_KEEP").is_some() {
        let kept = tmp.keep();
        eprintln!("bench: kept {}", kept.display());
    }
    let a = median(&mut act);
    let b = median(&mut base);
    let n = median(&mut noop);
    println!(
        "kiln-firstboot activation benchmark ({:.0} MB bundle, median of {runs})",
        bundle_size as f64 / 1e6
    );
    println!("  kiln-firstboot run (verify + unpack + fsync + activate)  {a:8.2} s");
    println!("  zstd -dc BUNDLE | tar -x                                 {b:8.2} s");
    println!(
        "  ratio kiln-firstboot / zstd+tar                          {:8.2} x   (target <= 1.3)",
        a / b
    );
    println!(
        "  kiln-firstboot peak RSS                                  {:8.1} MB  (target < 64)",
        rss as f64 / 1024.0
    );
    println!(
        "  no-op re-run (whole process)                             {:8.1} ms  (target < 50)",
        n * 1000.0
    );
}

fn abs(p: &str) -> PathBuf {
    Path::new(p).canonicalize().unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn prepare_root(root: &Path, bundle: &Path) {
    let baked = root.join("usr/lib/kiln/bundles");
    std::fs::create_dir_all(&baked).unwrap();
    std::fs::copy(bundle, baked.join(bundle.file_name().unwrap())).unwrap();
    let mut sum = bundle.as_os_str().to_owned();
    sum.push(".sha256");
    let mut dest = baked.join(bundle.file_name().unwrap()).into_os_string();
    dest.push(".sha256");
    std::fs::copy(sum, dest).unwrap();
    for (p, c) in [
        ("proc/cmdline", "ro\n"),
        ("proc/swaps", "Filename\tType\tSize\tUsed\tPriority\n"),
        ("etc/kiln/node.yaml", NODE),
    ] {
        std::fs::create_dir_all(root.join(p).parent().unwrap()).unwrap();
        std::fs::write(root.join(p), c).unwrap();
    }
}
