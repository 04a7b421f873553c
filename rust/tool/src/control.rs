// SPDX-License-Identifier: GPL-2.0
//! The control device: encodes one request into the 4096-byte buffer, issues the ioctl, decodes the reply.

use std::fs::{File, OpenOptions};
use std::path::Path;

use rmirror_core::abi::{self, Cmd, Reply, Request};

use crate::error::Failure;
use crate::sys;

/// An open `/dev/rmirror-control`.
#[derive(Debug)]
pub struct Control {
    file: File,
}

/// What a successful command returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The `minor` field (N of /dev/rmirrorN for CREATE, STATUS, TABLE).
    pub minor: u32,
    /// The reply text.
    pub text: String,
}

impl Control {
    /// Opens the control device read-write; errors carry the path as context.
    pub fn open(path: &Path) -> Result<Control, Failure> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map(|file| Control { file })
            .map_err(|e| Failure::io(&e).context(path.display().to_string()))
    }

    /// Runs `cmd` with `name` (may be empty) and `data`.
    ///
    /// The name is sent as given (the kernel validates it), so only names that cannot be
    /// encoded at all (longer than the 64-byte field) fail here, with `EINVAL`.
    pub fn call(&self, cmd: Cmd, name: &str, data: &[u8]) -> Result<Answer, Failure> {
        let mut buf = Box::new([0u8; abi::BUF_LEN]);
        Request {
            name: name.as_bytes(),
            data,
        }
        .encode(&mut buf)
        .map_err(|e| Failure::invalid(e.as_str()))?;
        self.raw(cmd.request(), &mut buf[..])?;
        decode_reply(&buf)
    }

    /// Issues `request` on `buf` as is (for `debug-ioctl`).
    pub fn raw(&self, request: u32, buf: &mut [u8]) -> Result<(), Failure> {
        sys::ioctl_buf(&self.file, request, buf)
            .map(|_| ())
            .map_err(|e| Failure::io(&e))
    }
}

/// Decodes a reply buffer; a malformed reply is `EPROTO`.
pub fn decode_reply(buf: &[u8; abi::BUF_LEN]) -> Result<Answer, Failure> {
    let bad =
        |e: abi::AbiError| Failure::new(libc::EPROTO, format!("bad reply from the kernel: {e}"));
    let reply = Reply::decode(buf).map_err(bad)?;
    let text = reply.text().map_err(bad)?;
    Ok(Answer {
        minor: reply.minor,
        text: text.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_enotty_on_a_regular_file() {
        let path = std::env::temp_dir().join(format!("rmirrorctl-test-{}", std::process::id()));
        std::fs::write(&path, b"").unwrap();
        let ctl = Control::open(&path).unwrap();
        let err = ctl.call(Cmd::Version, "", b"").unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(err.errno, libc::ENOTTY);
        assert_eq!(
            err.render("version", None),
            "rmirrorctl: version: Inappropriate ioctl for device (ENOTTY)\n"
        );
    }

    #[test]
    fn open_missing_device() {
        let err = Control::open(Path::new("/nonexistent/rmirror-control")).unwrap_err();
        assert_eq!(err.errno, libc::ENOENT);
        assert_eq!(err.context.as_deref(), Some("/nonexistent/rmirror-control"));
    }

    #[test]
    fn name_too_long_for_the_field() {
        let ctl = Control::open(Path::new("/dev/null")).unwrap();
        let err = ctl.call(Cmd::Status, &"x".repeat(65), b"").unwrap_err();
        assert_eq!(err.errno, libc::EINVAL);
    }

    #[test]
    fn reply_decoding() {
        let mut buf = [0u8; abi::BUF_LEN];
        abi::write_reply(&mut buf, 4, b"rmirror 0.1.0").unwrap();
        assert_eq!(
            decode_reply(&buf).unwrap(),
            Answer {
                minor: 4,
                text: "rmirror 0.1.0".into()
            }
        );
        buf[0] = 9;
        assert_eq!(decode_reply(&buf).unwrap_err().errno, libc::EPROTO);
    }
}
