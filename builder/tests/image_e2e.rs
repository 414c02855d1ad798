//! The whole chain, booted (`just e2e`): build the Debian 12 bundle through apt, bake it into the
//! Debian 12 image with `kiln image` (all four formats), write a NoCloud seed disk (label cidata)
//! with user data, boot the raw image under QEMU with OVMF (UEFI, software emulation), and read the
//! serial console: kiln-firstboot verifies and activates the bundle, containerd starts from it under
//! systemd, a test unit imports a locally built OCI image and runs a container with runc, and the
//! sysext image merges with the bundle's binaries under /usr. A second image carries a corrupted
//! bundle: kiln-firstboot refuses it, containerd stays down, and its one-line failure is on the
//! console. Needs root (debootstrap), debootstrap, QEMU, OVMF, dosfstools, mtools, systemd-boot-efi,
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
const IMAGE_NAME: &str = "docker.io/kiln/busybox:e2e";
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

/// The test unit and its script: report the services, the state, run a container, merge the
/// sysext, power off.
fn overlay(dir: &Path, sysext: &Path) {
    let e2e = dir.join("opt/kiln-e2e");
    std::fs::create_dir_all(&e2e).unwrap();
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
if systemctl is-active -q containerd.service; then
  ctr=/var/lib/kiln/current/bin/ctr
  $ctr -n e2e images import /opt/kiln-e2e/busybox.oci.tar >/dev/null
  $ctr -n e2e run --rm --runc-binary /var/lib/kiln/current/bin/runc {IMAGE_NAME} e2e /bin/busybox sh -c 'echo KILN-E2E-CONTAINER-OK in $(busybox uname -s)'
fi
mkdir -p /run/extensions
cp /opt/kiln-e2e/*.raw /run/extensions/
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

fn state_json(console: &str) -> serde_json::Value {
    let line = console
        .lines()
        .find_map(|l| l.split_once("KILN-E2E-STATE ").map(|(_, j)| j.trim()))
        .unwrap_or_else(|| panic!("no state on the console:\n{console}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
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

    // The bundle, through apt.
    run(kiln()
        .arg("build")
        .arg(root.join("manifests/debian-12.yaml"))
        .arg("-o")
        .arg(dir.join("bundle"))
        .env("KILN_CACHE", &cache));
    let bundle = dir.join("bundle").join(BUNDLE);
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
    overlay(&good_overlay, &sysext);
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
    let state = state_json(&console);
    assert_eq!(state["result"], "ok");
    let activation_ms: f64 = state["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["ms"].as_f64())
        .sum();
    let boot_to_activated = state["uptimeS"].as_f64().expect("uptimeS in state.json");

    // A corrupted bundle: refused, containerd never starts, one line on the console. The overlay
    // puts it in place of the good one after baking (the cached base makes this build fast).
    let bad_overlay = dir.join("bad-overlay");
    overlay(&bad_overlay, &sysext);
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
    println!(
        "e2e: activation (kiln-firstboot's steps)             {:.2} s",
        activation_ms / 1000.0
    );
    println!("e2e: QEMU start to the check's power-off             {wall:.1} s");
}
