//! Hostile archives: tar entries written header by header, so that names and links the `tar`
//! crate's own path checks would refuse (`..`, absolute paths, escaping links) reach the reader
//! under test.

/// Append one entry with an old-style (v7) header. False, and nothing appended, when the name or
/// link does not fit the header's 100 bytes.
pub fn raw_entry(
    tar: &mut tar::Builder<Vec<u8>>,
    name: &[u8],
    kind: tar::EntryType,
    mode: u32,
    data: &[u8],
    link: Option<&[u8]>,
) -> bool {
    if name.len() > 99 || link.is_some_and(|l| l.len() > 99) {
        return false;
    }
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    if let Some(l) = link {
        h.as_old_mut().linkname[..l.len()].copy_from_slice(l);
    }
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(data.len() as u64);
    h.set_cksum();
    tar.append(&h, data).unwrap();
    true
}
