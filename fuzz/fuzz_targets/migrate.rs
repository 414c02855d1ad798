//! `kiln migrate` input: YAML maps, command lines, systemd units and drop-ins, environment files,
//! daemon.json, and the old KubeletConfiguration. The input is split at a NUL byte into a unit and
//! an environment file (read together, as `kiln migrate unit env` would), and is also tried as the
//! `--kubelet-config` file.
#![no_main]
use libfuzzer_sys::fuzz_target;

use kiln_builder::migrate::{migrate, parse, read, Input, OldKubeletConfig};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(old) = parse(text, "fuzz") {
            let _ = migrate(&old, "1.36.4", None);
            let kc = OldKubeletConfig {
                origin: "fuzz-config".into(),
                text: text.to_string(),
            };
            let _ = migrate(&old, "1.36.4", Some(&kc));
        }
        if let Some((a, b)) = text.split_once('\0') {
            let inputs = [
                Input {
                    origin: "/etc/systemd/system/kubelet.service".into(),
                    text: a.to_string(),
                },
                Input {
                    origin: "/etc/default/kubelet".into(),
                    text: b.to_string(),
                },
            ];
            if let Ok(old) = read(&inputs) {
                let _ = migrate(&old, "1.36.4", None);
            }
        }
    }
});
