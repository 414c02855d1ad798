//! An SPDX 2.3 JSON software bill of materials for a bundle's components, deterministic so the bundle
//! stays reproducible (the creation time is `SOURCE_DATE_EPOCH`, the namespace derives from content).

use kiln_bundle::digest::Sha256;
use kiln_bundle::index::ComponentRecord;
use kiln_bundle::manifest::Arch;
use serde_json::json;

pub fn render(name: &str, version: &str, arch: Arch, components: &[ComponentRecord], epoch: u64) -> Vec<u8> {
    let doc_name = format!("{name}-{version}-{arch}");
    let fingerprint: String = components
        .iter()
        .map(|c| format!("{}={}\n", c.name, c.source_sha256))
        .collect();
    let namespace = format!(
        "https://kiln.dev/spdx/{doc_name}/{}",
        Sha256::of(fingerprint.as_bytes()).short()
    );
    let packages: Vec<_> = components
        .iter()
        .map(|c| {
            let mut p = json!({
                "name": c.name,
                "SPDXID": spdx_id(&c.name),
                "versionInfo": c.version,
                "downloadLocation": download_location(&c.source),
                "filesAnalyzed": false,
                "checksums": [{"algorithm": "SHA256", "checksumValue": c.source_sha256.hex()}],
                "licenseConcluded": "NOASSERTION",
                "licenseDeclared": "NOASSERTION",
                "copyrightText": "NOASSERTION",
                "supplier": "NOASSERTION",
            });
            if let Some(purl) = purl(c, arch) {
                p["externalRefs"] = json!([{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": purl}]);
            }
            p
        })
        .collect();
    let relationships: Vec<_> = components
        .iter()
        .map(|c| json!({"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": spdx_id(&c.name)}))
        .collect();
    let doc = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": doc_name,
        "documentNamespace": namespace,
        "creationInfo": {"created": kiln_bundle::time::rfc3339(epoch), "creators": [format!("Tool: {}", crate::tool_version().replace(' ', "-"))]},
        "packages": packages,
        "relationships": relationships,
    });
    let mut v = serde_json::to_vec_pretty(&doc).expect("SBOM serializes");
    v.push(b'\n');
    v
}

fn spdx_id(name: &str) -> String {
    format!(
        "SPDXRef-Package-{}",
        name.replace(|c: char| !c.is_ascii_alphanumeric() && c != '.' && c != '-', "-")
    )
}

fn download_location(source: &str) -> String {
    if source.starts_with("http://") || source.starts_with("https://") {
        source.to_string()
    } else {
        "NOASSERTION".into()
    }
}

fn purl(c: &ComponentRecord, arch: Arch) -> Option<String> {
    let (pkg, ver) = c.source.strip_prefix("apt:")?.split_once('=')?;
    Some(format!(
        "pkg:deb/debian/{pkg}@{}?arch={arch}",
        ver.replace('+', "%2B").replace(':', "%3A")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(kiln_bundle::time::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(kiln_bundle::time::rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(kiln_bundle::time::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn sbom_lists_components_with_checksums_and_purls() {
        let c = vec![ComponentRecord {
            name: "containerd".into(),
            version: "1.6.20".into(),
            source: "apt:containerd=1.6.20~ds1-1+deb12u3".into(),
            source_sha256: Sha256::of(b"x"),
            format: "deb".into(),
        }];
        let v: serde_json::Value = serde_json::from_slice(&render("n", "1", Arch::Amd64, &c, 0)).unwrap();
        assert_eq!(v["spdxVersion"], "SPDX-2.3");
        assert_eq!(
            v["packages"][0]["checksums"][0]["checksumValue"],
            Sha256::of(b"x").hex()
        );
        assert_eq!(
            v["packages"][0]["externalRefs"][0]["referenceLocator"],
            "pkg:deb/debian/containerd@1.6.20~ds1-1%2Bdeb12u3?arch=amd64"
        );
        assert_eq!(
            render("n", "1", Arch::Amd64, &c, 0),
            render("n", "1", Arch::Amd64, &c, 0)
        );
    }
}
