//! The default CNI configuration: a bridge with host-local IPAM and portmap, plus loopback.

use kiln_bundle::manifest::CniConfig;
use serde_json::json;

/// `10-kiln.conflist`: bridge + host-local + portmap (CNI spec 1.0.0).
pub fn conflist(cfg: &CniConfig) -> String {
    let v = json!({
        "cniVersion": "1.0.0",
        "name": "kiln",
        "plugins": [
            {
                "type": "bridge",
                "bridge": cfg.bridge,
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": cfg.subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}]
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    });
    let mut v = v;
    if let Some(mtu) = cfg.mtu {
        v["plugins"][0]["mtu"] = json!(mtu);
    }
    serde_json::to_string_pretty(&v).expect("serializes") + "\n"
}

/// `99-loopback.conf`. containerd's CRI brings `lo` up itself with the loopback plugin; the file is
/// for tools that read the configuration directory (cnitool, debugging).
pub fn loopback() -> String {
    let v = json!({"cniVersion": "1.0.0", "name": "lo", "type": "loopback"});
    serde_json::to_string_pretty(&v).expect("serializes") + "\n"
}
