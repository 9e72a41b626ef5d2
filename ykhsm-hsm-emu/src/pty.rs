//! The emulator on a pseudo-terminal, served by a thread: what a test
//! gives ykhsmd or the driver as `device = <path>`.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::pty::openpty;
use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};

use crate::Link;

/// The emulator behind a pseudo-terminal. Dropping it stops the thread
/// and closes the terminal (to the host: the device is gone).
#[derive(Debug)]
pub struct EmuPty {
    _slave: OwnedFd,
    path: PathBuf,
    mute: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EmuPty {
    /// Opens a pseudo-terminal in raw mode and serves `link` on it.
    pub fn start(mut link: Link) -> std::io::Result<Self> {
        let pty = openpty(None, None)?;
        // Not inherited by processes the test starts (a daemon holding the
        // master open would never see the device go away).
        for fd in [pty.master.as_fd(), pty.slave.as_fd()] {
            fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
        }
        let mut t = tcgetattr(pty.slave.as_fd())?;
        cfmakeraw(&mut t);
        tcsetattr(pty.slave.as_fd(), SetArg::TCSANOW, &t)?;
        let path = nix::unistd::ttyname(pty.slave.as_fd())?;
        let mut master = File::from(pty.master);
        let mute = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (mute2, stop2) = (Arc::clone(&mute), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stop2.load(Ordering::SeqCst) {
                let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, PollTimeout::from(50u16)) {
                    Ok(0) => {
                        link.idle();
                        continue;
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
                let n = match master.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let out = link.input(&buf[..n]);
                if !mute2.load(Ordering::SeqCst)
                    && !out.is_empty()
                    && master.write_all(&out).is_err()
                {
                    break;
                }
            }
        });
        Ok(Self {
            _slave: pty.slave,
            path,
            mute,
            stop,
            thread: Some(thread),
        })
    }

    /// The terminal's path (`/dev/pts/N`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops answering (the device hangs) or starts again.
    pub fn set_mute(&self, on: bool) {
        self.mute.store(on, Ordering::SeqCst);
    }
}

impl Drop for EmuPty {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
