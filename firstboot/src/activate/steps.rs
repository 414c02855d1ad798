//! The steps of an activation, its options and outcome, and the per-step timer.

use std::time::{Duration, Instant};

use crate::datasource::Endpoints;
use crate::state::StepTiming;

/// Declares the steps once: the enum, its names, and `Step::ALL` in order, so a new step cannot be
/// left out of `ALL` (the crash-at-every-step test walks it).
macro_rules! steps {
    ($($step:ident => $name:literal),+ $(,)?) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
        pub enum Step {
            $($step),+
        }

        impl Step {
            /// Every step, in the order activation runs them.
            pub const ALL: &'static [Step] = &[$(Step::$step),+];

            pub fn name(self) -> &'static str {
                match self {
                    $(Step::$step => $name),+
                }
            }
        }
    };
}

steps! {
    Config => "config",
    Verify => "verify",
    Rename => "rename",
    Render => "render",
    Flip => "flip",
    Install => "install",
    Kernel => "kernel",
    Swap => "swap",
    Services => "services",
    Health => "health",
    State => "state",
}

impl Step {
    pub fn parse(s: &str) -> Option<Step> {
        Step::ALL.iter().copied().find(|st| st.name() == s)
    }
}

#[derive(Clone)]
pub struct Options {
    pub endpoints: Endpoints,
    pub health_timeout: Duration,
    /// Stop right after this step, as if the process were killed there (crash-safety tests).
    pub stop_after: Option<Step>,
    pub phase: Phase,
    /// Mount the bundle's verity image or unpack the bundle.
    pub mode: ModeRequest,
}

/// The mode asked for: `Auto` mounts the verity image where the bundle has one and the node can do
/// dm-verity, and unpacks otherwise, saying why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ModeRequest {
    #[default]
    Auto,
    Verity,
    Unpack,
}

/// At boot, systemd orders containerd and kubelet after `kiln-firstboot.service`, so activation
/// cannot wait for them: it queues their start and exits, and `kiln-firstboot-health.service`
/// (ordered after them) checks their health and rolls back. Run by hand, both phases run at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    #[default]
    All,
    Activate,
    Health,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            endpoints: Endpoints::default(),
            health_timeout: Duration::from_secs(60),
            stop_after: None,
            phase: Phase::All,
            mode: ModeRequest::Auto,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Everything was already in place; nothing was changed.
    AlreadyActive {
        version: String,
    },
    Activated {
        version: String,
    },
    /// Stopped by `stop_after`.
    Stopped {
        after: Step,
    },
}

pub(crate) struct Timer {
    pub(crate) steps: Vec<StepTiming>,
    pub(crate) started: Instant,
    pub(crate) stop_after: Option<Step>,
}

impl Timer {
    /// Record `step` as done; true when the run must stop here.
    pub(crate) fn done(&mut self, step: Step) -> bool {
        self.steps.push(StepTiming {
            step: step.name().into(),
            ms: self.started.elapsed().as_secs_f64() * 1000.0,
        });
        self.started = Instant::now();
        self.stop_after == Some(step)
    }
}
