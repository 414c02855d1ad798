//! `kiln image` from a recipe whose base is a rootfs tarball (no debootstrap, no root mounts):
//! the raw disk's partition table and filesystems are checked with the real tools (sfdisk, mtools,
//! e2fsck, debugfs), the build is byte-for-byte reproducible, and bad input fails naming what was
//! wrong with nothing left in the output directory. The booted image is `image_e2e.rs`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const STEM: &str = "tiny-k8s-node-1.36.4-1";

/// A tiny base: busybox, a stand-in kernel and initrd, and the machine identity an image must drop.
fn base(dir: &Path) -> PathBuf {
    base_with(dir, "base", &[])
}

/// [`base`] with `extra` files, as the tarball `DIR/NAME.tar`.
fn base_with(dir: &Path, name: &str, extra: &[(&str, &[u8])]) -> PathBuf {
    let root = dir.join(name);
    for d in ["bin", "boot", "etc/ssh", "var/lib/dbus", "usr/lib/systemd/system"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for unit in [
        "systemd-networkd.service",
        "systemd-networkd.socket",
        "systemd-networkd-wait-online.service",
    ] {
        std::fs::write(root.join("usr/lib/systemd/system").join(unit), b"[Unit]\n").unwrap();
    }
    // What debootstrap leaves behind: the build machine's resolver.
    std::fs::write(root.join("etc/resolv.conf"), b"nameserver 192.0.2.53\n").unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    std::fs::write(root.join("boot/vmlinuz-6.1.0-test"), b"not really a kernel").unwrap();
    std::fs::write(root.join("boot/initrd.img-6.1.0-test"), b"not really an initrd").unwrap();
    std::fs::write(root.join("etc/hostname"), b"builder\n").unwrap();
    std::fs::write(root.join("etc/machine-id"), b"0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::write(root.join("etc/ssh/ssh_host_ed25519_key"), b"secret").unwrap();
    std::fs::write(
        root.join("var/lib/dbus/machine-id"),
        b"0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    for (path, content) in extra {
        std::fs::create_dir_all(root.join(path).parent().unwrap()).unwrap();
        std::fs::write(root.join(path), content).unwrap();
    }
    let tar = dir.join(format!("{name}.tar"));
    run(Command::new("tar").arg("-cf").arg(&tar).arg("-C").arg(&root).arg("."));
    tar
}

/// A recipe named after its base line, so each variant is a file of its own.
fn recipe(dir: &Path, base_line: &str) -> PathBuf {
    recipe_for(dir, base_line, "amd64")
}

/// [`recipe`] for `arch` (spec.architecture).
fn recipe_for(dir: &Path, base_line: &str, arch: &str) -> PathBuf {
    let p = dir.join(format!(
        "tiny-{arch}-{}.yaml",
        &kiln_testkit::sha256_hex(base_line.as_bytes())[..8]
    ));
    std::fs::write(
        &p,
        format!(
            "apiVersion: kiln.dev/v1alpha1\nkind: ImageRecipe\nmetadata: {{name: tiny}}\nspec:\n  architecture: {arch}\n  base:\n    {base_line}\n  rootfs: {{type: ext4, size: 256MiB}}\n  partitions:\n    - {{name: esp, type: esp, size: 64MiB}}\n    - {{name: root, type: root}}\n  kernelCommandLine: console=ttyS0\n"
        ),
    )
    .unwrap();
    p
}

fn firstboot(dir: &Path) -> PathBuf {
    // Any executable will do here: this image is inspected, not booted.
    let p = dir.join("kiln-firstboot");
    std::fs::copy("/bin/busybox", &p).unwrap();
    p
}

fn image(dir: &Path, recipe: &Path, bundle: &Path, out: &Path, formats: &str) -> std::process::Output {
    image_with(dir, recipe, bundle, out, formats, &firstboot(dir))
}

/// [`image`] with a given kiln-firstboot.
fn image_with(dir: &Path, recipe: &Path, bundle: &Path, out: &Path, formats: &str, fb: &Path) -> std::process::Output {
    kiln(
        &dir.join("cache"),
        &[
            "image",
            recipe.to_str().unwrap(),
            "--bundle",
            bundle.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--format",
            formats,
            "--firstboot",
            fb.to_str().unwrap(),
        ],
    )
}

/// The root partition of a tiny image, cut out with dd and checked clean by e2fsck.
fn root_partition(dir: &Path, raw: &Path) -> PathBuf {
    let rootfs = dir.join("root.img");
    run(Command::new("dd")
        .arg(format!("if={}", raw.display()))
        .arg(format!("of={}", rootfs.display()))
        .args(["bs=1M", "skip=65", "count=256", "status=none"]));
    run(Command::new("e2fsck").args(["-f", "-n"]).arg(&rootfs));
    rootfs
}

/// `qemu-img info` of `image` read as `format`: its virtual size is the raw disk's, and converting
/// it back gives the raw disk's bytes. Returns the info.
fn qemu_img_reads_back(dir: &Path, image: &Path, format: &str, raw: &Path) -> serde_json::Value {
    let info: serde_json::Value = serde_json::from_str(&run(Command::new("qemu-img")
        .args(["info", "--output=json", "-f", format])
        .arg(image)))
    .unwrap();
    assert_eq!(info["virtual-size"], std::fs::metadata(raw).unwrap().len(), "{info}");
    let back = dir.join(format!("from-{format}.raw"));
    run(Command::new("qemu-img")
        .args(["convert", "-f", format, "-O", "raw"])
        .arg(image)
        .arg(&back));
    assert_eq!(sha256(&back), sha256(raw));
    std::fs::remove_file(&back).unwrap();
    info
}

fn sha256(p: &Path) -> String {
    kiln_testkit::sha256_hex(&std::fs::read(p).unwrap())
}

#[test]
fn raw_qcow2_vhd_vmdk_ova_gce_and_rootfs_tar_from_a_tarball_base_are_valid_and_reproducible() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    base(dir);
    let recipe = recipe(dir, "rootfsTar: base.tar");
    let bundle = standin_bundle(dir);
    let out = dir.join("images");
    ok(&image(
        dir,
        &recipe,
        &bundle,
        &out,
        "raw,qcow2,vhd,vmdk,ova,gce,rootfs-tar",
    ));
    let mut files = listing(&out);
    files.sort();
    assert_eq!(
        files,
        [
            format!("{STEM}.gce.tar.gz"),
            format!("{STEM}.ova"),
            format!("{STEM}.qcow2"),
            format!("{STEM}.raw"),
            format!("{STEM}.rootfs.tar.zst"),
            format!("{STEM}.vhd"),
            format!("{STEM}.vmdk"),
        ],
        "only the images: no work files left"
    );
    let raw = out.join(format!("{STEM}.raw"));

    // The GPT: an ESP and a DPS root, 1 MiB aligned.
    let table: serde_json::Value = serde_json::from_str(&run(Command::new("sfdisk").arg("--json").arg(&raw))).unwrap();
    let parts = table["partitiontable"]["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0]["type"], "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    assert_eq!(parts[1]["type"], "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709");
    assert_eq!(parts[0]["start"], 2048);
    assert_eq!(parts[0]["size"], 64 * 2048);
    assert_eq!(parts[1]["size"], 256 * 2048);
    let root_partuuid = parts[1]["uuid"].as_str().unwrap().to_lowercase();

    // The ESP, read in place by mtools: systemd-boot, the kernel, and the BLS entry naming the root.
    let esp = format!("{}@@{}", raw.display(), 1 << 20);
    let dirlist = run(Command::new("mdir").args(["-/", "-b", "-i", &esp, "::/"]));
    for f in [
        "::/EFI/BOOT/BOOTX64.EFI",
        "::/loader/entries/kiln.conf",
        "::/kiln/vmlinuz",
        "::/kiln/initrd.img",
    ] {
        assert!(dirlist.to_uppercase().contains(&f.to_uppercase()), "{f} in\n{dirlist}");
    }
    let entry = run(Command::new("mtype").args(["-i", &esp, "::/loader/entries/kiln.conf"]));
    assert!(
        entry.contains(&format!(
            "options console=ttyS0 root=PARTUUID={root_partuuid} rootfstype=ext4 rw"
        )),
        "{entry}"
    );
    assert!(
        entry.contains("linux /kiln/vmlinuz") && entry.contains("initrd /kiln/initrd.img"),
        "{entry}"
    );
    let kernel = run(Command::new("mtype").args(["-i", &esp, "::/kiln/vmlinuz"]));
    assert_eq!(kernel, "not really a kernel");

    // The root filesystem: cut out with dd, clean under e2fsck, with what the image must carry.
    let rootfs = root_partition(dir, &raw);
    let debugfs = |req: &str| run(Command::new("debugfs").args(["-R", req]).arg(&rootfs));
    let baked = debugfs("ls -l /usr/lib/kiln/bundles");
    assert!(baked.contains("k8s-node-1.36.4-1-amd64.kiln.tar.zst.sha256"), "{baked}");
    assert!(debugfs("stat /etc/machine-id").contains("Size: 0"), "machine-id empty");
    assert!(debugfs("ls /etc").contains("fstab"));
    assert!(!debugfs("ls /etc").contains("hostname"), "hostname removed");
    assert!(!debugfs("ls /etc/ssh").contains("ssh_host_"), "host keys removed");
    assert!(debugfs("stat /var/lib/dbus/machine-id").contains("Type: symlink"));
    let wants = debugfs("ls -l /etc/systemd/system/multi-user.target.wants");
    assert!(
        wants.contains("kiln-firstboot.service") && wants.contains("kiln-firstboot-health.service"),
        "{wants}"
    );
    assert!(wants.contains("systemd-networkd.service"), "{wants}");
    let network = debugfs("cat /etc/systemd/network/80-kiln-dhcp.network");
    assert!(
        network.contains("DHCP=yes") && network.contains("Name=en* eth*"),
        "{network}"
    );
    let online = debugfs("ls -l /etc/systemd/system/network-online.target.wants");
    assert!(online.contains("systemd-networkd-wait-online.service"), "{online}");
    let resolv = debugfs("cat /etc/resolv.conf");
    assert!(
        !resolv.contains("192.0.2.53"),
        "the build machine's resolver is not baked in: {resolv}"
    );
    let fstab = debugfs("cat /etc/fstab");
    assert!(fstab.contains(&format!("PARTUUID={root_partuuid} / ext4")), "{fstab}");
    let bundle_in_image = dir.join("baked.kiln.tar.zst");
    debugfs(&format!(
        "dump /usr/lib/kiln/bundles/k8s-node-1.36.4-1-amd64.kiln.tar.zst {}",
        bundle_in_image.display()
    ));
    assert_eq!(
        sha256(&bundle_in_image),
        sha256(&bundle),
        "the bundle is baked byte for byte"
    );

    // qcow2 holds the same disk.
    let back = dir.join("back.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(out.join(format!("{STEM}.qcow2")))
        .arg(&back));
    assert_eq!(sha256(&back), sha256(&raw));

    // vhd: a fixed VHD as qemu-img reads it (format vpc), its size a whole MiB, holding the same
    // disk; the footer is the last 512 bytes.
    let vhd = out.join(format!("{STEM}.vhd"));
    let raw_len = std::fs::metadata(&raw).unwrap().len();
    assert_eq!(raw_len % (1 << 20), 0, "the raw disk is MiB-aligned");
    assert_eq!(std::fs::metadata(&vhd).unwrap().len(), raw_len + 512);
    let info = qemu_img_reads_back(dir, &vhd, "vpc", &raw);
    assert_eq!(info["format"], "vpc", "{info}");

    // vmdk: streamOptimized as vSphere imports it, consistent, holding the same disk; its
    // descriptor names the file it ships as.
    let vmdk = out.join(format!("{STEM}.vmdk"));
    run(Command::new("qemu-img").args(["check", "-f", "vmdk"]).arg(&vmdk));
    let info = qemu_img_reads_back(dir, &vmdk, "vmdk", &raw);
    assert_eq!(
        info["format-specific"]["data"]["create-type"], "streamOptimized",
        "{info}"
    );
    let descriptor = String::from_utf8_lossy(&std::fs::read(&vmdk).unwrap()[..4096]).into_owned();
    assert!(descriptor.contains(&format!("\"{STEM}.vmdk\"")), "{descriptor}");
    assert!(descriptor.contains("ddb.adapterType = \"lsilogic\""), "{descriptor}");

    // ova: the descriptor, the manifest and the same VMDK, in that order, in a tar; the descriptor is
    // well-formed XML naming the disk with its size and capacity and UEFI firmware; the manifest's
    // digests are the files'.
    let ova = out.join(format!("{STEM}.ova"));
    let listed = run(Command::new("tar").arg("-tvf").arg(&ova));
    let members: Vec<&str> = listed.lines().collect();
    assert_eq!(members.len(), 3, "{listed}");
    for (m, name) in members.iter().zip(["ovf", "mf", "vmdk"]) {
        assert!(
            m.starts_with("-rw-r--r-- 0/0") && m.ends_with(&format!(" {STEM}.{name}")),
            "{listed}"
        );
    }
    let x = dir.join("ova-x");
    std::fs::create_dir(&x).unwrap();
    run(Command::new("tar").arg("-xf").arg(&ova).arg("-C").arg(&x));
    let ovf_path = x.join(format!("{STEM}.ovf"));
    run(Command::new("xmllint").arg("--noout").arg(&ovf_path));
    let ovf = std::fs::read_to_string(&ovf_path).unwrap();
    let vmdk_len = std::fs::metadata(&vmdk).unwrap().len();
    assert!(
        ovf.contains(&format!(
            "ovf:href=\"{STEM}.vmdk\" ovf:id=\"file1\" ovf:size=\"{vmdk_len}\""
        )),
        "{ovf}"
    );
    assert!(ovf.contains(&format!("ovf:capacity=\"{raw_len}\"")), "{ovf}");
    assert!(ovf.contains("vmw:key=\"firmware\" vmw:value=\"efi\""), "{ovf}");
    assert_eq!(sha256(&x.join(format!("{STEM}.vmdk"))), sha256(&vmdk), "the same VMDK");
    let mf = std::fs::read_to_string(x.join(format!("{STEM}.mf"))).unwrap();
    assert_eq!(
        mf,
        format!(
            "SHA256({STEM}.ovf)= {}\nSHA256({STEM}.vmdk)= {}\n",
            sha256(&ovf_path),
            sha256(&vmdk)
        )
    );
    std::fs::remove_dir_all(&x).unwrap();

    // gce: exactly `disk.raw` in a gzipped tar, as Compute Engine imports it, holding the same disk.
    let gce = out.join(format!("{STEM}.gce.tar.gz"));
    let listed = run(Command::new("tar").arg("-tzvf").arg(&gce));
    let members: Vec<&str> = listed.lines().collect();
    assert_eq!(members.len(), 1, "{listed}");
    assert!(
        members[0].starts_with("-rw-r--r-- 0/0")
            && members[0].ends_with(" disk.raw")
            && members[0].contains(&format!(" {raw_len} ")),
        "{listed}"
    );
    let x = dir.join("gce-x");
    std::fs::create_dir(&x).unwrap();
    run(Command::new("tar").arg("-xzf").arg(&gce).arg("-C").arg(&x));
    assert_eq!(sha256(&x.join("disk.raw")), sha256(&raw));
    std::fs::remove_dir_all(&x).unwrap();

    // Same inputs, same bytes: every format.
    let again = dir.join("again");
    ok(&image(dir, &recipe, &bundle, &again, "raw,vhd,vmdk,ova,gce,rootfs-tar"));
    for ext in ["vhd", "vmdk", "ova", "gce.tar.gz"] {
        assert_eq!(
            sha256(&again.join(format!("{STEM}.{ext}"))),
            sha256(&out.join(format!("{STEM}.{ext}"))),
            "{ext} is reproducible"
        );
    }
    assert_eq!(
        sha256(&again.join(format!("{STEM}.raw"))),
        sha256(&raw),
        "raw is reproducible"
    );
    assert_eq!(
        sha256(&again.join(format!("{STEM}.rootfs.tar.zst"))),
        sha256(&out.join(format!("{STEM}.rootfs.tar.zst"))),
        "rootfs-tar is reproducible"
    );
}

#[test]
fn bad_input_fails_naming_it_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    base(dir);
    let bundle = standin_bundle(dir);
    let out = dir.join("images");

    // A corrupted bundle is refused before anything is built.
    let bad = dir.join("bad").join(bundle.file_name().unwrap());
    std::fs::create_dir_all(bad.parent().unwrap()).unwrap();
    let mut bytes = std::fs::read(&bundle).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&bad, bytes).unwrap();
    std::fs::copy(
        bundle.with_file_name(format!("{}.sha256", bundle.file_name().unwrap().to_str().unwrap())),
        bad.with_file_name(format!("{}.sha256", bad.file_name().unwrap().to_str().unwrap())),
    )
    .unwrap();
    let good = recipe(dir, "rootfsTar: base.tar");
    let e = fails(&image(dir, &good, &bad, &out, "raw"));
    assert!(e.contains(bad.to_str().unwrap()), "{e}");
    assert!(listing(&out).is_empty(), "{:?}", listing(&out));

    // A bundle without its .sha256 beside it.
    let bare = dir.join("bare").join(bundle.file_name().unwrap());
    std::fs::create_dir_all(bare.parent().unwrap()).unwrap();
    std::fs::copy(&bundle, &bare).unwrap();
    let e = fails(&image(dir, &good, &bare, &out, "raw"));
    assert!(e.contains(&format!("{}.sha256 not found", bare.display())), "{e}");
    assert!(listing(&out).is_empty(), "{:?}", listing(&out));

    // A missing base tarball, a bad recipe, a missing firstboot binary.
    let missing = recipe(dir, "rootfsTar: nowhere.tar");
    let e = fails(&image(dir, &missing, &bundle, &out, "raw"));
    assert!(e.contains("spec.base.rootfsTar") && e.contains("nowhere.tar"), "{e}");
    let both = recipe(
        dir,
        "rootfsTar: base.tar\n    debootstrap: {suite: bookworm, mirror: 'http://deb.debian.org/debian'}",
    );
    let e = fails(&image(dir, &both, &bundle, &out, "raw"));
    assert!(e.contains("not both"), "{e}");
    let e = fails(&kiln(
        &dir.join("cache"),
        &[
            "image",
            good.to_str().unwrap(),
            "--bundle",
            bundle.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--firstboot",
            "/nonexistent/kiln-firstboot",
        ],
    ));
    assert!(
        e.contains("kiln-firstboot not found at /nonexistent/kiln-firstboot"),
        "{e}"
    );

    // A base without a kernel.
    let nokernel = dir.join("nokernel");
    std::fs::create_dir_all(nokernel.join("etc")).unwrap();
    let units = nokernel.join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    for unit in [
        "systemd-networkd.service",
        "systemd-networkd.socket",
        "systemd-networkd-wait-online.service",
    ] {
        std::fs::write(units.join(unit), b"[Unit]\n").unwrap();
    }
    run(Command::new("tar")
        .arg("-cf")
        .arg(dir.join("nokernel.tar"))
        .arg("-C")
        .arg(&nokernel)
        .arg("."));
    let r = recipe(dir, "rootfsTar: nokernel.tar");
    let e = fails(&image(dir, &r, &bundle, &out, "raw"));
    assert!(e.contains("no kernel in /boot"), "{e}");
    assert!(listing(&out).is_empty(), "{:?}", listing(&out));

    // The sysext needs no base at all.
    ok(&image(dir, &r, &bundle, &out, "sysext"));
    let list = run(Command::new("unsquashfs").arg("-l").arg(out.join("kiln-k8s-node.raw")));
    assert!(list.contains("squashfs-root/usr/bin/kubelet"), "{list}");
    assert!(
        list.contains("squashfs-root/usr/lib/kiln/bundles/k8s-node-1.36.4-1-amd64.kiln.tar.zst"),
        "{list}"
    );
    let release = dir.join("release");
    run(Command::new("unsquashfs")
        .arg("-d")
        .arg(&release)
        .arg(out.join("kiln-k8s-node.raw"))
        .arg("usr/lib/extension-release.d"));
    let text =
        std::fs::read_to_string(release.join("usr/lib/extension-release.d/extension-release.kiln-k8s-node")).unwrap();
    assert!(text.starts_with("ID=_any\n"), "{text}");
}

#[test]
fn without_root_the_disk_still_has_the_bases_owners_and_device_nodes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // A base with a file owned by someone else and a device node: only root can make that tarball.
    let base_dir = dir.join("base");
    base(dir);
    std::fs::write(base_dir.join("etc/owned"), b"x").unwrap();
    run(Command::new("chown").arg("100:101").arg(base_dir.join("etc/owned")));
    std::fs::create_dir_all(base_dir.join("dev")).unwrap();
    run(Command::new("mknod")
        .arg(base_dir.join("dev/null"))
        .args(["c", "1", "3"]));
    run(Command::new("tar")
        .arg("-cf")
        .arg(dir.join("base.tar"))
        .arg("-C")
        .arg(&base_dir)
        .arg("."));
    let recipe = recipe(dir, "rootfsTar: base.tar");
    let bundle = standin_bundle(dir);
    let fb = firstboot(dir);
    for d in ["nobody-cache", "nobody-out"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
        run(Command::new("chown").arg("65534:65534").arg(dir.join(d)));
    }
    let as_nobody = |format: &str| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_kiln"))
            .arg("image")
            .arg(&recipe)
            .arg("--bundle")
            .arg(&bundle)
            .arg("-o")
            .arg(dir.join("nobody-out"))
            .args(["--format", format])
            .arg("--firstboot")
            .arg(&fb)
            .env("KILN_CACHE", dir.join("nobody-cache"))
            .env("HOME", dir.join("nobody-cache"))
            .output()
            .expect("setpriv (util-linux)")
    };
    let e = fails(&as_nobody("rootfs-tar"));
    assert!(e.contains("rootfs-tar needs root"), "{e}");
    ok(&as_nobody("raw"));

    let raw = dir.join("nobody-out").join(format!("{STEM}.raw"));
    let rootfs = root_partition(dir, &raw);
    let stat = |p: &str| run(Command::new("debugfs").args(["-R", &format!("stat {p}")]).arg(&rootfs));
    let owned = stat("/etc/owned");
    assert!(
        owned.contains("User:   100") && owned.contains("Group:   101"),
        "{owned}"
    );
    let null = stat("/dev/null");
    assert!(null.contains("Type: character special"), "{null}");
    assert!(null.contains("Device major/minor number: 01:03"), "{null}");
    for p in ["/usr/bin/kiln-firstboot", "/usr/lib/kiln/bundles", "/etc", "/"] {
        let s = stat(p);
        assert!(s.contains("User:     0") && s.contains("Group:     0"), "{p}: {s}");
    }
}

#[test]
fn an_arm64_recipe_lays_out_an_aarch64_disk_and_takes_only_an_arm64_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // An arm64 base carries its own systemd-boot (Debian's systemd-boot-efi for arm64); this
    // machine has only the x86-64 one.
    let loader: &[u8] = b"an aarch64 systemd-boot";
    base_with(
        dir,
        "base-arm64",
        &[("usr/lib/systemd/boot/efi/systemd-bootaa64.efi", loader)],
    );
    base_with(dir, "base-no-loader", &[]);
    let arm64 = recipe_for(dir, "rootfsTar: base-arm64.tar", "arm64");
    let amd64_bundle = standin_bundle_for(dir, "amd64");
    let arm64_bundle = standin_bundle_for(dir, "arm64");
    let out = dir.join("images");

    // A bundle of the other architecture is refused, naming both, before anything is written.
    let e = fails(&image(dir, &arm64, &amd64_bundle, &out, "raw"));
    assert!(
        e.contains("the bundle is for amd64, but recipe") && e.contains("builds arm64 images (spec.architecture)"),
        "{e}"
    );
    let amd64 = recipe(dir, "rootfsTar: base-arm64.tar");
    let e = fails(&image(dir, &amd64, &arm64_bundle, &out, "raw"));
    assert!(
        e.contains("the bundle is for arm64") && e.contains("builds amd64 images"),
        "{e}"
    );
    assert!(listing(&out).is_empty(), "nothing written: {:?}", listing(&out));

    // kiln-firstboot must be built for the image's machines: this machine's (x86-64) is refused.
    let e = fails(&image(dir, &arm64, &arm64_bundle, &out, "raw"));
    assert!(
        e.contains("kiln-firstboot is built for x86-64, but recipe")
            && e.contains("pass --firstboot with an aarch64 build"),
        "{e}"
    );
    assert!(listing(&out).is_empty(), "nothing written: {:?}", listing(&out));
    // An aarch64 ELF header stands in for an aarch64 build: the image is inspected, not booted.
    let fb = dir.join("kiln-firstboot-aarch64");
    let mut elf = vec![0u8; 64];
    elf[..7].copy_from_slice(b"\x7fELF\x02\x01\x01"); // 64-bit, little-endian, version 1
    elf[16] = 2; // ET_EXEC
    elf[18] = 183; // EM_AARCH64
    std::fs::write(&fb, elf).unwrap();

    // debootstrap for another architecture needs QEMU's user emulator registered. Where it is not
    // (`scripts/setup` installs none), the error says what to install; where it is, kiln goes on to
    // debootstrap, which fails on this recipe's dead mirror.
    let deboot = recipe_for(
        dir,
        "debootstrap: {suite: bookworm, mirror: http://127.0.0.1:9/debian}",
        "arm64",
    );
    let e = fails(&image_with(dir, &deboot, &arm64_bundle, &out, "raw", &fb));
    if Path::new("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists() {
        assert!(e.contains("debootstrap failed"), "{e}");
    } else {
        assert!(
            e.contains("give an arm64 root filesystem as spec.base.rootfsTar") && e.contains("qemu-user-static"),
            "{e}"
        );
    }

    // Without an aarch64 systemd-boot in the base or on this machine: a clear error.
    assert!(!Path::new("/usr/lib/systemd/boot/efi/systemd-bootaa64.efi").exists());
    let bare = recipe_for(dir, "rootfsTar: base-no-loader.tar", "arm64");
    let e = fails(&image_with(dir, &bare, &arm64_bundle, &out, "raw", &fb));
    assert!(
        e.contains("no arm64 systemd-boot") && e.contains("systemd-bootaa64.efi"),
        "{e}"
    );

    // The arm64 layout: the DPS root type for arm64, the base's systemd-boot as BOOTAA64.EFI.
    ok(&image_with(dir, &arm64, &arm64_bundle, &out, "raw", &fb));
    let raw = out.join("tiny-k8s-node-1.36.4-1.raw");
    let table: serde_json::Value = serde_json::from_str(&run(Command::new("sfdisk").arg("--json").arg(&raw))).unwrap();
    let parts = table["partitiontable"]["partitions"].as_array().unwrap();
    assert_eq!(parts[0]["type"], "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    assert_eq!(parts[1]["type"], "B921B045-1DF0-41C3-AF44-4C6F280D3FAE", "{table}");
    assert_eq!(parts[1]["name"], "root-arm64");
    let esp = format!("{}@@{}", raw.display(), 1 << 20);
    let dirlist = run(Command::new("mdir").args(["-/", "-b", "-i", &esp, "::/EFI"]));
    assert!(dirlist.to_uppercase().contains("::/EFI/BOOT/BOOTAA64.EFI"), "{dirlist}");
    assert!(!dirlist.to_uppercase().contains("BOOTX64"), "{dirlist}");
    let booted = run(Command::new("mtype").args(["-i", &esp, "::/EFI/BOOT/BOOTAA64.EFI"]));
    assert_eq!(booted.as_bytes(), loader);
    let rootfs = root_partition(dir, &raw);
    let baked = run(Command::new("debugfs")
        .args(["-R", "ls -l /usr/lib/kiln/bundles"])
        .arg(&rootfs));
    assert!(baked.contains("k8s-node-1.36.4-1-arm64.kiln.tar.zst"), "{baked}");
}

/// The `pxe` artifacts: the base's own kernel and initrd, a root image that busybox's cpio (a
/// reader other than kiln's) unpacks into the boot script and the whole root tree, the command
/// line and the iPXE script naming the files by their real names, and the same bytes twice.
#[test]
fn pxe_artifacts_from_a_tarball_base_are_complete_readable_and_reproducible() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    base(dir);
    let recipe = recipe(dir, "rootfsTar: base.tar");
    let bundle = standin_bundle(dir);
    let out = dir.join("images");
    ok(&image(dir, &recipe, &bundle, &out, "pxe"));
    let mut files = listing(&out);
    files.sort();
    let exts = ["cmdline", "initrd", "ipxe", "root", "vmlinuz"];
    assert_eq!(
        files,
        exts.map(|e| format!("{STEM}.pxe.{e}")),
        "only the artifacts: no work files left"
    );
    let file = |ext: &str| out.join(format!("{STEM}.pxe.{ext}"));
    assert_eq!(std::fs::read(file("vmlinuz")).unwrap(), b"not really a kernel");
    assert_eq!(std::fs::read(file("initrd")).unwrap(), b"not really an initrd");
    let cmdline = std::fs::read_to_string(file("cmdline")).unwrap();
    assert!(cmdline.ends_with(" boot=kiln-netboot rw\n"), "{cmdline}");
    let script = std::fs::read_to_string(file("ipxe")).unwrap();
    for ext in ["vmlinuz", "initrd", "root"] {
        assert!(script.contains(&format!(" {STEM}.pxe.{ext}")), "{script}");
    }
    assert!(script.contains(cmdline.trim()), "{script}");

    // The root image, read with busybox: the boot script, and the root tree inside.
    let x = dir.join("x");
    std::fs::create_dir(&x).unwrap();
    let unpack = |archive: &str, into: &Path| {
        run(Command::new("sh").arg("-c").arg(archive).current_dir(into));
    };
    unpack(
        &format!("zstd -dc {} | busybox cpio -i 2>/dev/null", file("root").display()),
        &x,
    );
    let boot_script = std::fs::read_to_string(x.join("scripts/kiln-netboot")).unwrap();
    assert!(boot_script.contains("mountroot()"), "{boot_script}");
    let tree = dir.join("tree");
    std::fs::create_dir(&tree).unwrap();
    unpack(
        &format!(
            "busybox cpio -i -d 2>/dev/null < {}",
            x.join("kiln/root.cpio").display()
        ),
        &tree,
    );
    let bundle_name = bundle.file_name().unwrap().to_str().unwrap();
    assert!(tree.join("usr/lib/kiln/bundles").join(bundle_name).is_file());
    assert!(tree.join("usr/bin/kiln-firstboot").is_file());
    assert!(tree
        .join("etc/systemd/system/multi-user.target.wants/kiln-firstboot.service")
        .symlink_metadata()
        .is_ok());
    let fstab = std::fs::read_to_string(tree.join("etc/fstab")).unwrap();
    assert!(fstab.contains("netboot") && !fstab.contains("PARTUUID"), "{fstab}");
    assert!(
        !tree.join("boot/vmlinuz-6.1.0-test").exists(),
        "the kernel is a file of its own"
    );
    assert!(!tree.join("etc/hostname").exists(), "no machine identity");

    // Same inputs, same bytes.
    let again = dir.join("again");
    ok(&image(dir, &recipe, &bundle, &again, "pxe"));
    for ext in exts {
        let name = format!("{STEM}.pxe.{ext}");
        assert_eq!(
            sha256(&again.join(&name)),
            sha256(&out.join(&name)),
            "{name} is reproducible"
        );
    }
}
