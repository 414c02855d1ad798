//! Benchmark for `kiln image` per format (issue: images users can ship anywhere), run by
//! `just bench`: the stand-in production bundle baked into a 1 GiB image from a rootfs-tarball base
//! (the base is extracted on every build, as with a cached debootstrap base). For each disk format
//! it prints kiln's wall time, what the format adds over `--format raw` in the same run, and the
//! baseline: the standard tool converting the same raw disk (`qemu-img convert` for qcow2, vpc
//! and streamOptimized vmdk; that vmdk hashed and tarred with a descriptor and manifest for the
//! OVA; GNU tar + gzip for the GCE tarball), in the same run. The `pxe` artifacts against the raw
//! disk and against packing the same tree with `find | busybox cpio -o -H newc | zstd -6`.
//!
//! Usage: bench-image PATH/TO/kiln PATH/TO/kiln-firstboot [RUNS]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use kiln_testkit::bench::{median, run};
use kiln_testkit::mirror::Mirror;
use kiln_testkit::standin;

const STEM: &str = "bench-k8s-node-1.36.4-1";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: bench-image PATH/TO/kiln PATH/TO/kiln-firstboot [RUNS]";
    let kiln = Path::new(args.get(1).expect(usage))
        .canonicalize()
        .expect("kiln binary");
    let firstboot = Path::new(args.get(2).expect(usage))
        .canonicalize()
        .expect("kiln-firstboot binary");
    let runs: usize = args.get(3).and_then(|r| r.parse().ok()).unwrap_or(3);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let cache = root.join("cache");

    eprintln!("bench: building the stand-in bundle and a tarball base ...");
    let mirror = Mirror::start();
    let m = standin::production_manifest(root, &mirror, "amd64", 0.25);
    let mut build = vec![
        "build".to_string(),
        m.display().to_string(),
        "-o".into(),
        root.join("bundle").display().to_string(),
        "--arch".into(),
        "amd64".into(),
    ];
    build.extend(standin::mirror_flags(&mirror.url()));
    run(Command::new(&kiln).args(&build).env("KILN_CACHE", &cache));
    let bundle = root.join("bundle/k8s-node-1.36.4-1-amd64.kiln.tar.zst");
    let recipe = base_and_recipe(root);

    let image = |format: &str, out: &Path| -> f64 {
        let _ = std::fs::remove_dir_all(out);
        let t = Instant::now();
        run(Command::new(&kiln)
            .arg("image")
            .arg(&recipe)
            .arg("--bundle")
            .arg(&bundle)
            .arg("-o")
            .arg(out)
            .args(["--format", format])
            .arg("--firstboot")
            .arg(&firstboot)
            .env("KILN_CACHE", &cache));
        t.elapsed().as_secs_f64()
    };
    let timed = |cmd: &mut Command| -> f64 {
        let t = Instant::now();
        run(cmd);
        t.elapsed().as_secs_f64()
    };

    // One build first: the raw disk the baselines convert, and a warm page cache for everyone.
    let raw_dir = root.join("raw");
    image("raw", &raw_dir);
    let raw = raw_dir.join(format!("{STEM}.raw"));
    let size_mib = std::fs::metadata(&raw).unwrap().len() >> 20;

    let mut raw_times: Vec<f64> = (0..runs).map(|_| image("raw", &root.join("o"))).collect();
    let raw_median = median(&mut raw_times);
    println!("kiln image, {size_mib} MiB disk from a tarball base, median of {runs}:");
    println!("  raw          kiln {raw_median:7.2} s");
    let conv = root.join("conv");
    // Each format and its baseline's `qemu-img convert -O FORMAT [-o OPTIONS]` (none: GNU tar).
    let formats = [
        ("qcow2", Some(("qcow2", None))),
        ("vhd", Some(("vpc", Some("subformat=fixed")))),
        ("vmdk", Some(("vmdk", Some("subformat=streamOptimized")))),
        ("ova", Some(("vmdk", Some("subformat=streamOptimized")))),
        ("gce", None),
    ];
    for (format, convert) in formats {
        let baseline_name = match convert {
            Some((to, opts)) => format!(
                "qemu-img convert -O {to}{}{}",
                opts.map(|o| format!(" -o {o}")).unwrap_or_default(),
                if format == "ova" {
                    " + tar of it, an .ovf and an .mf"
                } else {
                    ""
                }
            ),
            None => "tar -Sczf disk.raw".to_string(),
        };
        let mut kiln_times: Vec<f64> = (0..runs).map(|_| image(format, &root.join("o"))).collect();
        let mut base_times: Vec<f64> = (0..runs)
            .map(|_| {
                let _ = std::fs::remove_file(&conv);
                match convert {
                    Some((to, opts)) => {
                        let mut cmd = Command::new("qemu-img");
                        cmd.args(["convert", "-q", "-f", "raw", "-O", to]);
                        if let Some(o) = opts {
                            cmd.args(["-o", o]);
                        }
                        let converted = timed(cmd.arg(&raw).arg(&conv));
                        if format != "ova" {
                            return converted;
                        }
                        // The OVA's own work past the VMDK: the descriptor, the manifest, the tar.
                        let dir = root.join("ova");
                        let _ = std::fs::remove_dir_all(&dir);
                        std::fs::create_dir(&dir).unwrap();
                        std::fs::write(dir.join("d.ovf"), "<Envelope/>\n").unwrap();
                        std::fs::write(dir.join("d.mf"), "SHA256(d.ovf)= 0\n").unwrap();
                        std::fs::hard_link(&conv, dir.join("d.vmdk")).unwrap();
                        let tarred = timed(
                            Command::new("sh")
                                .arg("-c")
                                .arg("sha256sum d.vmdk >/dev/null && tar -cf ../baseline.ova d.ovf d.mf d.vmdk")
                                .current_dir(&dir),
                        );
                        converted + tarred
                    }
                    None => {
                        // GCE's documented way: the disk named disk.raw, in a sparse gzipped tar.
                        let dir = root.join("gce");
                        let _ = std::fs::remove_dir_all(&dir);
                        std::fs::create_dir(&dir).unwrap();
                        std::fs::hard_link(&raw, dir.join("disk.raw")).unwrap();
                        timed(
                            Command::new("tar")
                                .args(["--format=oldgnu", "-Sczf"])
                                .arg(&conv)
                                .arg("-C")
                                .arg(&dir)
                                .arg("disk.raw"),
                        )
                    }
                }
            })
            .collect();
        let k = median(&mut kiln_times);
        let added = k - raw_median;
        let b = median(&mut base_times);
        println!(
            "  {format:<12} kiln {k:7.2} s (the format adds {added:6.2} s over raw); baseline {baseline_name}: {b:6.2} s; ratio added/baseline {:.2}",
            added / b
        );
    }

    // Netboot: kiln's pxe format against the raw disk, and against packing the same root tree by
    // hand (`find | cpio -o -H newc | zstd -6`, the usual hand-made netboot root), in the same run.
    let tree = root.join("tree");
    image("rootfs-tar", &root.join("t"));
    std::fs::create_dir_all(&tree).unwrap();
    run(Command::new("tar")
        .args(["--zstd", "-xf"])
        .arg(root.join(format!("t/{STEM}.rootfs.tar.zst")))
        .arg("-C")
        .arg(&tree));
    let mut kiln_times: Vec<f64> = (0..runs).map(|_| image("pxe", &root.join("o"))).collect();
    let mut base_times: Vec<f64> = (0..runs)
        .map(|_| {
            timed(
                Command::new("sh")
                    .arg("-c")
                    .arg("find . | busybox cpio -o -H newc 2>/dev/null | zstd -q -6 -c > \"$1\"")
                    .arg("sh")
                    .arg(&conv)
                    .current_dir(&tree),
            )
        })
        .collect();
    let k = median(&mut kiln_times);
    let b = median(&mut base_times);
    println!(
        "  pxe          kiln {k:7.2} s (ratio to raw {:.2}); baseline find | busybox cpio -o -H newc | zstd -6 of the same tree: {b:6.2} s; ratio kiln/baseline {:.2}",
        k / raw_median,
        k / b
    );
}

/// A tarball base (busybox, a stand-in kernel and initrd, networkd units) and a recipe for a
/// 64 MiB ESP and a 1 GiB root.
fn base_and_recipe(root: &Path) -> PathBuf {
    let base = root.join("base");
    for d in ["bin", "boot", "etc", "usr/lib/systemd/system"] {
        std::fs::create_dir_all(base.join(d)).unwrap();
    }
    for unit in [
        "systemd-networkd.service",
        "systemd-networkd.socket",
        "systemd-networkd-wait-online.service",
    ] {
        std::fs::write(base.join("usr/lib/systemd/system").join(unit), b"[Unit]\n").unwrap();
    }
    std::fs::copy("/bin/busybox", base.join("bin/busybox")).expect("busybox-static (scripts/setup)");
    std::fs::write(base.join("boot/vmlinuz-6.1.0-bench"), standin::binary(8 << 20, 1)).unwrap();
    std::fs::write(base.join("boot/initrd.img-6.1.0-bench"), standin::binary(32 << 20, 2)).unwrap();
    let tar = root.join("base.tar");
    run(Command::new("tar").arg("-cf").arg(&tar).arg("-C").arg(&base).arg("."));
    let recipe = root.join("bench.yaml");
    std::fs::write(
        &recipe,
        "apiVersion: kiln.dev/v1alpha1\nkind: ImageRecipe\nmetadata: {name: bench}\nspec:\n  base:\n    rootfsTar: base.tar\n  rootfs: {type: ext4, size: 1GiB}\n  partitions:\n    - {name: esp, type: esp, size: 64MiB}\n    - {name: root, type: root}\n  kernelCommandLine: console=ttyS0\n",
    )
    .unwrap();
    recipe
}
