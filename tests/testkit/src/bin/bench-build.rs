//! Benchmark for `kiln build` (issue: builder foundation), run by `just bench`:
//! a ~300 MB bundle of stand-in binaries (real release sizes, Go-binary compressibility) built from a
//! warm cache, against `tar --sort=name ... | zstd -T0 -3` over the same staged tree, in the same
//! run. Prints both wall times, the ratio, kiln's peak RSS, and the no-op rebuild time.
//!
//! Usage: bench-build PATH/TO/kiln [RUNS]

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use kiln_testkit::bench::{median, run, timed_rss};
use kiln_testkit::mirror::Mirror;
use kiln_testkit::standin;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let kiln = Path::new(args.get(1).expect("usage: bench-build PATH/TO/kiln [RUNS]"))
        .canonicalize()
        .expect("kiln binary");
    let runs: usize = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(3);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();

    eprintln!("bench: generating stand-in artifacts at full scale ...");
    let mirror = Mirror::start();
    let m = standin::production_manifest(root, &mirror, "amd64", 1.0);
    let cache = root.join("cache");
    let out = root.join("out");
    let mut build = vec![
        "build".to_string(),
        m.display().to_string(),
        "-o".into(),
        out.display().to_string(),
        "--arch".into(),
        "amd64".into(),
    ];
    build.extend(standin::mirror_flags(&mirror.url()));

    // Cold build fills the cache (downloads and unpacks once).
    let t = Instant::now();
    run(Command::new(&kiln).args(&build).env("KILN_CACHE", &cache));
    let cold = t.elapsed().as_secs_f64();
    let bundle = out.join("k8s-node-1.36.4-1-amd64.kiln.tar.zst");
    let bundle_size = std::fs::metadata(&bundle).unwrap().len();

    // The staged tree for the baseline: exactly what the bundle holds.
    let staged = root.join("staged");
    std::fs::create_dir(&staged).unwrap();
    run(Command::new("tar")
        .args(["--zstd", "-xf"])
        .arg(&bundle)
        .arg("-C")
        .arg(&staged));
    let tree_size = dir_size(&staged);

    let mut kiln_times = Vec::new();
    let mut kiln_rss = 0u64;
    let mut base_times = Vec::new();
    for _ in 0..runs {
        std::fs::remove_dir_all(&out).unwrap();
        let (secs, rss) = timed_rss(
            Command::new("/usr/bin/time")
                .arg("-f")
                .arg("%e %M")
                .arg(&kiln)
                .args(&build)
                .env("KILN_CACHE", &cache),
        );
        kiln_times.push(secs);
        kiln_rss = kiln_rss.max(rss);

        let t = Instant::now();
        run(Command::new("sh")
            .arg("-c")
            .arg("tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C \"$1\" -cf - . | zstd -T0 -3 -q > \"$2\"")
            .arg("sh")
            .arg(&staged)
            .arg(root.join("baseline.tar.zst")));
        base_times.push(t.elapsed().as_secs_f64());
    }
    // Nothing changed: the second build must only check.
    let t = Instant::now();
    let noop = run(Command::new(&kiln).args(&build).env("KILN_CACHE", &cache));
    let noop_secs = t.elapsed().as_secs_f64();
    assert!(noop.contains("up to date"), "the no-op rebuild rebuilt: {noop}");

    let k = median(&mut kiln_times);
    let b = median(&mut base_times);
    let baseline_size = std::fs::metadata(root.join("baseline.tar.zst")).unwrap().len();
    println!(
        "kiln build benchmark (amd64 stand-ins, {:.0} MB staged tree, median of {runs})",
        tree_size as f64 / 1e6
    );
    println!("  cold build (download + unpack + write)   {cold:8.2} s");
    println!(
        "  kiln build, warm cache                   {k:8.2} s   -> {:.1} MB bundle",
        bundle_size as f64 / 1e6
    );
    println!(
        "  tar --sort=name ... | zstd -T0 -3        {b:8.2} s   -> {:.1} MB",
        baseline_size as f64 / 1e6
    );
    println!(
        "  ratio kiln / tar+zstd                    {:8.2} x   (target <= 1.0)",
        k / b
    );
    println!(
        "  kiln peak RSS                            {:8.1} MB  (target < 200)",
        kiln_rss as f64 / 1024.0
    );
    println!("  no-op rebuild                            {noop_secs:8.3} s   (target < 1)");
}

fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(p).unwrap().flatten() {
        let md = e.metadata().unwrap();
        total += if md.is_dir() { dir_size(&e.path()) } else { md.len() };
    }
    total
}
