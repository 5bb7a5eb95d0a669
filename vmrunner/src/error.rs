//! vmrunner's error: what failed while preparing, starting or watching a VM, in the words an
//! operator reads in the VM's `last_error`.

use std::fmt;

#[derive(Debug)]
pub enum Error {
    /// A file, socket or process call failed: what was being done, and the system's reason.
    Io { doing: String, source: std::io::Error },
    /// A tool (qemu-img, ip, mknod) ran and refused: which, and what it said.
    Tool { tool: String, said: String },
    /// QEMU's monitor refused a command or did not speak QMP.
    Qmp(String),
    /// QEMU or swtpm did not come up as they should.
    Start(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// For `map_err`: an I/O failure while `doing` something.
pub fn io(doing: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { doing: doing.into(), source }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { doing, source } => write!(f, "{doing}: {source}"),
            Error::Tool { tool, said } => write!(f, "{tool}: {said}"),
            Error::Qmp(what) | Error::Start(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_reads_as_a_sentence_and_keeps_its_cause() {
        let e = io("creating /vms/a")(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert_eq!(e.to_string(), "creating /vms/a: permission denied");
        assert!(std::error::Error::source(&e).is_some());
        let t = Error::Tool { tool: "qemu-img create".into(), said: "No space left on device".into() };
        assert_eq!(t.to_string(), "qemu-img create: No space left on device");
        assert_eq!(Error::Start("swtpm exited at start".into()).to_string(), "swtpm exited at start");
    }
}
