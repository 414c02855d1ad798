# kiln task runner. Every recipe also works without just: see scripts/.

default:
    @just --list

# install the system packages the tests and benchmarks need (idempotent)
setup:
    scripts/setup

# formatting and clippy, warnings are errors
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# the whole suite, as CI runs it
test:
    scripts/test

# end to end: the Debian 12 image booted under QEMU/OVMF (good and corrupted bundles), a real node
# (kubelet 1.32 + containerd 2.3.4) joining the real control plane and running a pod, and a roll
# across booted VMs; plus the apt and minisign tests. Needs KILN_K8S_BIN or ../shared/k8s/.
e2e:
    scripts/setup
    cargo build --workspace
    cargo test -p kiln-builder --test image_e2e --test node_e2e --test adopt_e2e --test debian_apt --test minisign_interop -- --nocapture --test-threads 1
    cargo test -p kiln-rollout --test vm_roll -- --nocapture

# a real control plane on 127.0.0.1 (etcd + Kubernetes v1.32 from KILN_K8S_BIN or ../shared/k8s/);
# prints an admin kubeconfig path and a bootstrap token; Ctrl-C stops it
cluster *args:
    cargo run -q -p kiln-testkit --bin kiln-cluster -- {{args}}

# fuzz every parser for SECONDS per target (cargo-fuzz; CI runs 60)
fuzz seconds="600":
    scripts/fuzz {{seconds}}

# benchmarks: kiln against its baselines, same run, figures and ratios printed
bench:
    scripts/bench

# build the Debian 12 container-runtime bundle, then inspect and verify it
demo:
    cargo run --release --bin kiln -- build manifests/debian-12.yaml -o out
    cargo run --release --bin kiln -- inspect out/debian12-runtime-1.0.0-amd64.kiln.tar.zst
    cargo run --release --bin kiln -- verify out/debian12-runtime-1.0.0-amd64.kiln.tar.zst
