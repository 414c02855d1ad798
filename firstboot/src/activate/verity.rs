//! Verity mode: the bundle's erofs image, baked beside it, opened through dm-verity with the root
//! hash from the verified index and mounted read-only at `/var/lib/kiln/bundles/<version>`, where
//! unpack mode writes the files. Chosen where the bundle has an image and the node can do
//! dm-verity; otherwise the bundle is unpacked and the state says why.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use kiln_bundle::index::Index;
use kiln_bundle::verity::{device_name, verity_path};

use crate::state::Mode;
use crate::system::System;

use super::ModeRequest;

/// The mode this activation uses, the image when it is verity, and why not when it could have been.
pub(crate) struct Chosen {
    pub mode: Mode,
    pub image: Option<PathBuf>,
    pub reason: Option<String>,
}

pub(crate) fn choose(bundle: &Path, index: &Index, sys: &mut dyn System, want: ModeRequest) -> Result<Chosen> {
    let unpack = |reason: String| Chosen {
        mode: Mode::Unpack,
        image: None,
        reason: Some(reason),
    };
    if want == ModeRequest::Unpack {
        return Ok(unpack("--mode unpack".into()));
    }
    let why_not = if index.verity.is_none() {
        "the bundle has no verity image (its manifest does not set spec.verity)".to_string()
    } else {
        let image = verity_path(bundle);
        match (image.is_file(), sys.verity_support()) {
            (false, _) => format!("{} is missing", image.display()),
            (true, Err(why)) => why.to_string(),
            (true, Ok(())) => {
                return Ok(Chosen {
                    mode: Mode::Verity,
                    image: Some(image),
                    reason: None,
                })
            }
        }
    };
    if want == ModeRequest::Verity {
        bail!("--mode verity: cannot mount bundle {}: {why_not}", bundle.display());
    }
    Ok(unpack(why_not))
}

/// Whether `dest` already holds `index`'s image, mounted.
pub(crate) fn mounted(dest: &Path, index: &Index, sys: &mut dyn System) -> bool {
    sys.is_mounted(dest) && holds(dest, index)
}

/// The image's `kiln-bundle.json` is the index without its own record.
fn holds(dest: &Path, index: &Index) -> bool {
    super::holds_index(dest, &index.without_verity())
}

/// Mount `image` at `dest` (replacing an unpacked tree or an empty mount point left there), then
/// check that it holds this bundle.
pub(crate) fn mount(image: &Path, index: &Index, dest: &Path, sys: &mut dyn System) -> Result<()> {
    let record = index
        .verity
        .as_ref()
        .ok_or_else(|| anyhow!("the bundle's index records no verity image"))?;
    if sys.is_mounted(dest) {
        bail!(
            "{} is mounted but holds another image than bundle {}'s; unmount it first",
            dest.display(),
            index.version
        );
    }
    super::remove_if_exists(dest)?;
    fs::create_dir_all(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    sys.mount_verity(image, record, &device_name(&index.version), dest)
        .with_context(|| format!("cannot mount the verity image {}", image.display()))?;
    if !holds(dest, index) {
        bail!(
            "{} mounted at {} does not hold bundle {}'s index",
            image.display(),
            dest.display(),
            index.version
        );
    }
    Ok(())
}
