//! Why old settings cannot be read or migrated. Every error names the input it came from, as
//! `kiln migrate` and `kiln-firstboot adopt` print it.

/// What is wrong with one input, or with the inputs together.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An input with nothing to read: empty, only comments, no variables, an empty map, a
    /// KubeletConfiguration without fields.
    #[error("{origin}: {what}")]
    Nothing { origin: String, what: &'static str },
    /// An input that parsed but is not the shape it must be (a JSON object, a YAML map, a
    /// scalar value).
    #[error("{origin}: expected {expected}")]
    Shape { origin: String, expected: String },
    /// A `--kubelet-config` file of another kind.
    #[error("{origin}: expected kind: KubeletConfiguration, found {found}")]
    Kind { origin: String, found: String },
    /// Text that does not parse: JSON, a line of an environment file.
    #[error("{origin}: {message}")]
    Syntax { origin: String, message: String },
    /// YAML that kiln's reader refuses; its message names the input, line and column.
    #[error(transparent)]
    Yaml(kiln_bundle::error::Error),
    /// An input that is none of the shapes read line by line (a command line, a unit, an
    /// environment file) and does not parse as the last one left, a YAML map.
    #[error("not a kubelet command line, unit, environment file or YAML map: {0}")]
    Unrecognised(kiln_bundle::error::Error),
    /// A command line (ExecStart, `Environment=`, a flags file) that does not split into flags.
    #[error("{origin}: {problem}")]
    Words { origin: String, problem: Words },
    /// A unit and its drop-ins with more than one ExecStart= and no reset between them.
    #[error("the unit has {} ExecStart= lines ({}) and no empty `ExecStart=` to reset them; systemd refuses such a service", .origins.len(), .origins.join(", "))]
    ExecStarts { origins: Vec<String> },
    /// A unit and its drop-ins without ExecStart=.
    #[error("{units}: no ExecStart= line: give the unit together with its drop-ins (kiln migrate kubelet.service 10-kubeadm.conf ...)")]
    NoExecStart { units: String },
    /// A unit's service that cannot be read (its merge failed); `units` names the files.
    #[error("{units}: {problem}")]
    Service { units: String, problem: Box<Error> },
    /// A Docker setting whose value is not what the setting takes.
    #[error("{from}: dockerd {name}: `{value}` is not {expected}")]
    DockerValue {
        from: String,
        name: String,
        value: String,
        expected: &'static str,
    },
    /// The inputs hold no kubelet flag or Docker setting; `dropped` lists what was read and set aside.
    #[error("{origins}: no kubelet flags or Docker settings found{}", dropped_list(.dropped))]
    NoSettings { origins: String, dropped: Vec<String> },
    /// The target is not a Kubernetes version.
    #[error("`{0}` is not a Kubernetes version such as 1.36.4")]
    TargetVersion(String),
}

/// Why a command line does not split into flags.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Words {
    /// A `'` that does not close.
    #[error("unterminated single quote")]
    UnterminatedSingle,
    /// A `"` that does not close.
    #[error("unterminated double quote")]
    UnterminatedDouble,
    /// A word that is neither a flag nor a flag's value.
    #[error("`{0}` is not a flag")]
    NotAFlag(String),
}

fn dropped_list(dropped: &[String]) -> String {
    if dropped.is_empty() {
        String::new()
    } else {
        format!(" ({})", dropped.join("; "))
    }
}
