//! The whole chain, booted (`just e2e`): build the Debian 12 bundle through apt, bake it into the
//! Debian 12 image with `kiln image` (all four formats), write a NoCloud seed disk (label cidata)
//! with user data, boot the raw image under QEMU with OVMF (UEFI, software emulation), and read the
//! serial console: kiln-firstboot verifies and activates the bundle, containerd starts from it under
//! systemd, a test unit imports a locally built OCI image and runs a container with runc, and the
//! sysext image merges with the bundle's binaries under /usr. A second image carries a corrupted
//! bundle: kiln-firstboot refuses it, containerd stays down, and its one-line failure is on the
//! console.
//!
//! The bundle is built with `spec.verity`, so the node runs from its erofs image through dm-verity:
//! the mount is read-only (a write fails with EROFS). A second bundle, 1.0.1, carried in the image,
//! has one byte flipped in the first block of its containerd inside the verity image: activated by
//! hand, containerd cannot even be executed (EIO, and the kernel logs the corrupted block), the
//! start fails, and the node rolls back to 1.0.0, which runs a container again. The same 1.0.1 is
//! then unpacked (its archive is intact), and 1.0.0 mounted afresh, each after dropping the page
//! cache: the activation time of the two modes on the same contents. Needs root (debootstrap), debootstrap, QEMU, OVMF, dosfstools, mtools, systemd-boot-efi,
//! squashfs-tools and qemu-img, which `scripts/setup` installs.
//!
//! It prints the image build time (the first, which debootstraps unless another test of the run
//! built the shared base already, and one with the base cached), the boot-to-activated time and
//! the activation time (from kiln-firstboot's own state.json).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::run;
use kiln_testkit::qemu::{Options, Vm};

const BUNDLE: &str = "debian12-runtime-1.0.0-amd64.kiln.tar.zst";
const BUNDLE_B: &str = "debian12-runtime-1.0.1-amd64.kiln.tar.zst";
const IMAGE_NAME: &str = "docker.io/kiln/busybox:e2e";
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

/// The test unit and its script: report the services, the state, run a container, check the
/// verity mount and roll back from bundle B (when `b` gives its files), merge the sysext, power off.
fn overlay(dir: &Path, sysext: &Path, b: Option<&Path>) {
    let e2e = dir.join("opt/kiln-e2e");
    std::fs::create_dir_all(&e2e).unwrap();
    if let Some(b) = b {
        std::fs::create_dir_all(e2e.join("b")).unwrap();
        for f in [
            BUNDLE_B.to_string(),
            format!("{BUNDLE_B}.sha256"),
            format!("{BUNDLE_B}.verity"),
        ] {
            std::fs::copy(b.join(&f), e2e.join("b").join(&f)).unwrap();
        }
    }
    std::fs::write(
        e2e.join("busybox.oci.tar"),
        kiln_testkit::oci::busybox_image(Path::new("/bin/busybox"), IMAGE_NAME),
    )
    .unwrap();
    std::fs::copy(sysext, e2e.join(sysext.file_name().unwrap())).unwrap();
    let script = format!(
        r#"#!/bin/sh
echo "KILN-E2E: hostname=$(hostname) firstboot=$(systemctl is-active kiln-firstboot.service) health=$(systemctl is-active kiln-firstboot-health.service) containerd=$(systemctl is-active containerd.service)"
[ -f /var/lib/kiln/state.json ] && echo "KILN-E2E-STATE $(tr -d '\n' < /var/lib/kiln/state.json)"
ctr=/var/lib/kiln/current/bin/ctr
container() {{
  $ctr -n e2e run --rm --runc-binary /var/lib/kiln/current/bin/runc {IMAGE_NAME} e2e /bin/busybox sh -c "echo $1 in \$(busybox uname -s)"
}}
if systemctl is-active -q containerd.service; then
  $ctr -n e2e images import /opt/kiln-e2e/busybox.oci.tar >/dev/null
  container KILN-E2E-CONTAINER-OK
fi
V=/var/lib/kiln
BAKED=/usr/lib/kiln/bundles
if [ -d /opt/kiln-e2e/b ] && systemctl is-active -q containerd.service; then
  echo "KILN-E2E-MOUNT $(findmnt -n -o FSTYPE,OPTIONS,SOURCE $V/bundles/1.0.0 | tr -s ' ')"
  if sh -c "echo x >> $V/current/bin/runc" 2>/tmp/ro; then echo KILN-E2E-RO-WRITABLE; else echo "KILN-E2E-RO-OK $(cat /tmp/ro)"; fi
  mkdir -p /opt/kiln-e2e/a
  mv $BAKED/* /opt/kiln-e2e/a/ && mv /opt/kiln-e2e/b/* $BAKED/
  kiln-firstboot run --health-timeout 60 >/dev/null 2>/tmp/b.err; rc=$?
  echo "KILN-E2E-B rc=$rc current=$(readlink $V/current) containerd=$(systemctl is-active containerd.service)"
  echo "KILN-E2E-B-ERR $(grep FAILED /tmp/b.err | tail -1)"
  if cat $V/bundles/1.0.1/bin/containerd >/dev/null 2>/tmp/eio; then echo KILN-E2E-EIO-MISSING; else echo "KILN-E2E-EIO $(cat /tmp/eio)"; fi
  echo "KILN-E2E-DMESG $(dmesg | grep -i -m1 'verity.*corrupted')"
  container KILN-E2E-ROLLED-BACK-OK
  umount $V/bundles/1.0.1 && veritysetup close kiln-1.0.1
  sync && echo 3 > /proc/sys/vm/drop_caches
  kiln-firstboot run --mode unpack >/dev/null 2>&1; rc=$?
  echo "KILN-E2E-UNPACKED rc=$rc $(tr -d '\n' < $V/state.json)"
  mv $BAKED/* /opt/kiln-e2e/b/ && mv /opt/kiln-e2e/a/* $BAKED/
  umount $V/bundles/1.0.0 && veritysetup close kiln-1.0.0
  sync && echo 3 > /proc/sys/vm/drop_caches
  kiln-firstboot run >/dev/null 2>&1; rc=$?
  echo "KILN-E2E-MOUNTED rc=$rc $(tr -d '\n' < $V/state.json)"
  container KILN-E2E-VERITY-AGAIN-OK
fi
# On disk, not in /run: the sysext carries the verity image, larger than /run's share of memory.
mkdir -p /var/lib/extensions
cp /opt/kiln-e2e/*.raw /var/lib/extensions/
if systemd-sysext merge >/dev/null 2>&1; then
  echo "KILN-E2E-SYSEXT-OK $(ls /usr/lib/kiln/bundles | tr '\n' ' ')$(/usr/bin/runc --version | head -1)"
  systemd-sysext unmerge >/dev/null 2>&1
else
  echo "KILN-E2E-SYSEXT-FAILED $(systemd-sysext merge 2>&1 | tr '\n' ' ')"
fi
echo KILN-E2E-DONE
systemctl poweroff
"#
    );
    let bin = dir.join("usr/local/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("kiln-e2e"), script).unwrap();
    std::fs::set_permissions(
        bin.join("kiln-e2e"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let units = dir.join("etc/systemd/system");
    std::fs::create_dir_all(units.join("multi-user.target.wants")).unwrap();
    std::fs::write(
        units.join("kiln-e2e.service"),
        "[Unit]\nDescription=kiln e2e check\nAfter=kiln-firstboot-health.service containerd.service\n\n[Service]\nType=oneshot\nExecStart=/usr/local/bin/kiln-e2e\nStandardOutput=journal+console\nStandardError=journal+console\n\n[Install]\nWantedBy=multi-user.target\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "../kiln-e2e.service",
        units.join("multi-user.target.wants/kiln-e2e.service"),
    )
    .unwrap();
}

/// A NoCloud seed with the node's host name, its address and a pool label.
fn seed(dir: &Path) -> PathBuf {
    kiln_testkit::qemu::nocloud_seed(
        dir,
        "e2e",
        "#cloud-config\nhostname: kiln-e2e-node\nkiln:\n  nodeIP: 10.0.2.15\n  labels:\n    kiln.dev/pool: e2e\n",
        "instance-id: kiln-e2e\nlocal-hostname: kiln-e2e-node\n",
    )
}

fn boot(dir: &Path, name: &str, disk: &Path, seed: &Path) -> String {
    let mut vm = Vm::boot(dir, name, disk, seed, &Options::default());
    vm.wait_exit(BOOT_TIMEOUT)
}

fn image(recipe: &Path, bundle: &Path, out: &Path, firstboot: &Path, overlay: &Path, formats: &str) -> (f64, String) {
    common::kiln_image(recipe, bundle, out, firstboot, Some(overlay), formats)
}

/// The rest of the first console line that starts with `marker` (after it).
fn line_after<'a>(console: &'a str, marker: &str) -> &'a str {
    console
        .lines()
        .find_map(|l| l.split_once(marker).map(|(_, rest)| rest.trim()))
        .unwrap_or_else(|| panic!("no {marker} on the console:\n{console}"))
}

/// state.json as the script printed it after `marker`.
fn state_json(console: &str, marker: &str) -> serde_json::Value {
    let line = line_after(console, marker);
    let json = line.find('{').map_or(line, |i| &line[i..]);
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// The verify step's time (verify and unpack, or verify and mount) and the whole activation's, in
/// seconds, from a state.json.
fn timings(state: &serde_json::Value) -> (f64, f64) {
    let steps = state["steps"].as_array().expect("steps in state.json");
    let ms = |s: &serde_json::Value| s["ms"].as_f64().unwrap_or(0.0);
    let verify = steps.iter().filter(|s| s["step"] == "verify").map(ms).sum::<f64>();
    (verify / 1000.0, steps.iter().map(ms).sum::<f64>() / 1000.0)
}

/// A copy of the Debian 12 manifest with `spec.verity` and `version`.
fn verity_manifest(root: &Path, dir: &Path, version: &str) -> PathBuf {
    let text = std::fs::read_to_string(root.join("manifests/debian-12.yaml")).unwrap();
    assert!(text.contains("\nspec:\n") && text.contains("  version: \"1.0.0\"\n"));
    let text = text.replacen("\nspec:\n", "\nspec:\n  verity: true\n", 1).replacen(
        "  version: \"1.0.0\"\n",
        &format!("  version: \"{version}\"\n"),
        1,
    );
    let out = dir.join(format!("debian-12-verity-{version}.yaml"));
    std::fs::write(&out, text).unwrap();
    out
}

/// Flip one byte in the first block of bundle `b`'s `bin/containerd` inside its verity image: the
/// image is uncompressed erofs, so the file's first 4 KiB sit verbatim on a block boundary.
fn corrupt_containerd(b: &Path) -> u64 {
    let head = run(Command::new("sh")
        .arg("-c")
        .arg("tar --zstd -xOf \"$1\" bin/containerd | head -c 4096 | od -An -v -tx1")
        .arg("sh")
        .arg(b));
    let head: Vec<u8> = head
        .split_whitespace()
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    assert_eq!(head.len(), 4096);
    let image = kiln_bundle::verity::verity_path(b);
    let mut bytes = std::fs::read(&image).unwrap();
    let at = bytes
        .chunks(4096)
        .position(|block| block == head.as_slice())
        .expect("bin/containerd's first block is in the image")
        * 4096;
    bytes[at + 1000] ^= 0x01;
    std::fs::write(&image, bytes).unwrap();
    at as u64
}

#[test]
fn debian_12_image_boots_activates_and_runs_a_container() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let tmp = tempfile::Builder::new()
        .prefix("kiln-e2e-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let dir = tmp.path();
    let cache = dir.join("cache");

    // The bundles, through apt, with their verity images; B with one byte flipped in its image.
    for (version, out) in [("1.0.0", "bundle"), ("1.0.1", "bundle-b")] {
        run(kiln()
            .arg("build")
            .arg(verity_manifest(&root, dir, version))
            .arg("-o")
            .arg(dir.join(out))
            .env("KILN_CACHE", &cache));
    }
    let bundle = dir.join("bundle").join(BUNDLE);
    corrupt_containerd(&dir.join("bundle-b").join(BUNDLE_B));
    let firstboot = common::stripped_firstboot(dir);

    // The sysext first (no base needed), then the node image in every other format, cold.
    let out = dir.join("out");
    let sysext_dir = dir.join("sysext-overlay");
    std::fs::create_dir_all(&sysext_dir).unwrap();
    let recipe = root.join("images/debian-12.yaml");
    run(kiln()
        .arg("image")
        .arg(&recipe)
        .arg("--bundle")
        .arg(&bundle)
        .arg("-o")
        .arg(&out)
        // The default extension-release, ID=_any: the sysext is not tied to one OS release.
        .args(["--format", "sysext"])
        .arg("--firstboot")
        .arg(&firstboot)
        .env("KILN_CACHE", &cache));
    let sysext = out.join("kiln-debian12-runtime.raw");
    let unsquashed = run(Command::new("unsquashfs").arg("-l").arg(&sysext));
    assert!(unsquashed.contains("usr/bin/runc"), "{unsquashed}");
    assert!(
        unsquashed.contains("usr/lib/extension-release.d/extension-release.kiln-debian12-runtime"),
        "{unsquashed}"
    );
    let good_overlay = dir.join("overlay");
    overlay(&good_overlay, &sysext, Some(&dir.join("bundle-b")));
    let (first, first_base) = image(
        &recipe,
        &bundle,
        &out,
        &firstboot,
        &good_overlay,
        "raw,qcow2,rootfs-tar",
    );
    let stem = "debian-12-debian12-runtime-1.0.0";
    let raw = out.join(format!("{stem}.raw"));
    for f in [format!("{stem}.qcow2"), format!("{stem}.rootfs.tar.zst")] {
        assert!(out.join(&f).is_file(), "{f} was produced");
    }
    let info = run(Command::new("qemu-img")
        .arg("info")
        .arg(out.join(format!("{stem}.qcow2"))));
    assert!(info.contains("file format: qcow2"), "{info}");
    let table = run(Command::new("sfdisk").arg("--dump").arg(&raw));
    assert!(table.contains("label: gpt"), "{table}");
    assert!(
        table.contains("type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
        "an ESP: {table}"
    );
    assert!(
        table.contains("type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"),
        "a DPS x86-64 root: {table}"
    );
    let listing = run(Command::new("tar")
        .args(["--zstd", "-tvf"])
        .arg(out.join(format!("{stem}.rootfs.tar.zst"))));
    assert!(
        listing.contains(&format!("./usr/lib/kiln/bundles/{BUNDLE}")),
        "the bundle is baked in"
    );
    assert!(listing.contains("./usr/bin/kiln-firstboot"));
    assert!(listing.contains("./etc/systemd/system/multi-user.target.wants/kiln-firstboot.service ->"));
    assert!(!listing.contains("./etc/hostname"), "no hostname baked in");
    let machine_id = listing
        .lines()
        .find(|l| l.ends_with("./etc/machine-id"))
        .expect("etc/machine-id");
    assert!(machine_id.contains(" 0 1970-01-01"), "empty, fixed time: {machine_id}");

    // The same inputs give the same disk, byte for byte.
    let again = dir.join("again");
    image(&recipe, &bundle, &again, &firstboot, &good_overlay, "raw");
    assert_eq!(
        kiln_testkit::sha256_hex(&std::fs::read(again.join(format!("{stem}.raw"))).unwrap()),
        kiln_testkit::sha256_hex(&std::fs::read(&raw).unwrap()),
        "the raw image is reproducible"
    );
    std::fs::remove_dir_all(&again).unwrap();

    // Boot it.
    let seed = seed(dir);
    let boot_started = Instant::now();
    let console = boot(dir, "good", &raw, &seed);
    let wall = boot_started.elapsed().as_secs_f64();
    assert!(
        console.contains("KILN-E2E: hostname=kiln-e2e-node firstboot=active health=active containerd=active"),
        "{console}"
    );
    assert!(console.contains("KILN-E2E-CONTAINER-OK in Linux"), "{console}");
    assert!(
        console.contains(&format!("KILN-E2E-SYSEXT-OK {BUNDLE}")) && console.contains("runc version"),
        "{console}"
    );
    let state = state_json(&console, "KILN-E2E-STATE ");
    assert_eq!(state["result"], "ok");
    assert_eq!(state["mode"], "verity", "{state}");
    let (_, activation) = timings(&state);
    let boot_to_activated = state["uptimeS"].as_f64().expect("uptimeS in state.json");

    // Verity: an erofs mount, read-only, from the dm-verity device.
    let mount = line_after(&console, "KILN-E2E-MOUNT ");
    assert!(
        mount.starts_with("erofs ro") && mount.contains("/dev/mapper/kiln-1.0.0"),
        "{mount}"
    );
    let ro = line_after(&console, "KILN-E2E-RO-OK");
    assert!(ro.contains("Read-only file system"), "{console}");
    // B's flipped byte: containerd cannot be read, the start fails, the node rolls back to 1.0.0.
    let b = line_after(&console, "KILN-E2E-B ");
    assert_eq!(b, "rc=1 current=bundles/1.0.0 containerd=active", "{console}");
    let b_err = line_after(&console, "KILN-E2E-B-ERR ");
    assert!(
        b_err.contains("bundle 1.0.1 failed its health check") && b_err.contains("rolled back to 1.0.0"),
        "{b_err}"
    );
    let eio = line_after(&console, "KILN-E2E-EIO ");
    assert!(eio.contains("Input/output error"), "{eio}");
    let dmesg = line_after(&console, "KILN-E2E-DMESG ");
    assert!(dmesg.contains("verity") && dmesg.contains("corrupted"), "{console}");
    assert!(console.contains("KILN-E2E-ROLLED-BACK-OK in Linux"), "{console}");
    // The same contents unpacked (B's archive is intact), then mounted (1.0.0, afresh).
    let unpacked = state_json(&console, "KILN-E2E-UNPACKED ");
    assert!(
        line_after(&console, "KILN-E2E-UNPACKED ").starts_with("rc=0"),
        "{console}"
    );
    assert_eq!(
        (&unpacked["version"], &unpacked["mode"]),
        (&"1.0.1".into(), &"unpack".into())
    );
    let mounted = state_json(&console, "KILN-E2E-MOUNTED ");
    assert!(
        line_after(&console, "KILN-E2E-MOUNTED ").starts_with("rc=0"),
        "{console}"
    );
    assert_eq!(
        (&mounted["version"], &mounted["mode"]),
        (&"1.0.0".into(), &"verity".into())
    );
    assert!(console.contains("KILN-E2E-VERITY-AGAIN-OK in Linux"), "{console}");
    let (unpack_verify, unpack_total) = timings(&unpacked);
    let (verity_verify, verity_total) = timings(&mounted);

    // A corrupted bundle: refused, containerd never starts, one line on the console. The overlay
    // puts it in place of the good one after baking (the cached base makes this build fast).
    let bad_overlay = dir.join("bad-overlay");
    overlay(&bad_overlay, &sysext, None);
    let baked = bad_overlay.join("usr/lib/kiln/bundles");
    std::fs::create_dir_all(&baked).unwrap();
    let mut bytes = std::fs::read(&bundle).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(baked.join(BUNDLE), bytes).unwrap();
    let bad_out = dir.join("bad");
    let (cached, base) = image(&recipe, &bundle, &bad_out, &firstboot, &bad_overlay, "raw");
    assert_eq!(base, "cached");
    let console = boot(dir, "bad", &bad_out.join(format!("{stem}.raw")), &seed);
    let failure: Vec<&str> = console
        .lines()
        .filter(|l| l.contains("kiln-firstboot: FAILED:"))
        .collect();
    assert!(
        !failure.is_empty(),
        "the one-line failure is on the console:\n{console}"
    );
    assert!(
        failure[0].contains(BUNDLE) || failure[0].contains("sha256"),
        "{}",
        failure[0]
    );
    assert!(console.contains("containerd=inactive"), "{console}");
    assert!(!console.contains("KILN-E2E-CONTAINER-OK"), "{console}");

    println!("e2e: image build, base {first_base} (raw, qcow2, rootfs-tar)  {first:.1} s");
    println!("e2e: image build, cached base (raw)                 {cached:.1} s");
    println!("e2e: boot to activated (uptime in state.json)        {boot_to_activated:.1} s");
    println!("e2e: activation at first boot, verity (steps)       {activation:.2} s");
    println!(
        "e2e: same contents by hand, cold cache: verify+unpack {unpack_verify:.2} s, verify+mount {verity_verify:.2} s (ratio {:.2}); whole activation {unpack_total:.2} s against {verity_total:.2} s (ratio {:.2})",
        verity_verify / unpack_verify,
        verity_total / unpack_total
    );
    println!("e2e: QEMU start to the check's power-off             {wall:.1} s");
}
