//! The emulator on a pseudo-terminal, served by a thread: what a test
//! gives ykhsmd or the driver as `device = <path>`.
//!
//! The thread carries out the [`Misbehave`] setting on each answer; a test
//! switches it at run time with [`EmuPty::set_misbehave`] (or
//! [`EmuPty::set_misbehave_once`]) and can wait for it to have happened with
//! [`EmuPty::wait_misbehaved`].

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::pty::openpty;
use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};

use ykhsm_yubihsm::wire::RESPONSE_FLAG;

use crate::{Link, Misbehave};

/// How often the serving thread looks at the stop flag while it waits
/// (input poll, [`Misbehave::Slow`] delay).
const TICK: Duration = Duration::from_millis(10);
/// Input silence after which a partial frame is dropped ([`Link::idle`]).
const IDLE: u16 = 50;

/// What the test and the serving thread share.
#[derive(Debug, Default)]
struct Shared {
    mute: AtomicBool,
    stop: AtomicBool,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    misbehave: Misbehave,
    /// Go back to [`Misbehave::None`] after the next answer.
    once: bool,
    /// Answers misbehaved on so far.
    misbehaved: u64,
    /// Answers the emulator made so far (whether sent, late, cut or muted):
    /// counted as soon as a request is complete and carried out.
    answered: u64,
    /// The terminal was hung up ([`Misbehave::Close`]).
    gone: bool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The setting for the answer about to be sent (consuming a one-shot).
    fn take_mode(&self) -> Misbehave {
        let mut state = self.state();
        let mode = state.misbehave;
        if state.once {
            state.once = false;
            state.misbehave = Misbehave::None;
        }
        mode
    }

    fn count_answered(&self) {
        self.state().answered += 1;
        self.changed.notify_all();
    }

    fn count_misbehaved(&self) {
        self.state().misbehaved += 1;
        self.changed.notify_all();
    }

    fn set_gone(&self) {
        self.state().gone = true;
        self.changed.notify_all();
    }

    /// Sleeps until `until`; false if asked to stop meanwhile.
    fn sleep_until(&self, until: Instant) -> bool {
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return false;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            std::thread::sleep(left.min(TICK));
        }
    }
}

/// The emulator behind a pseudo-terminal. Dropping it stops the thread
/// and closes the terminal (to the host: the device is gone).
#[derive(Debug)]
pub struct EmuPty {
    path: PathBuf,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl EmuPty {
    /// Opens a pseudo-terminal in raw mode and serves `link` on it, starting
    /// with the emulator's [`Misbehave`] setting
    /// ([`crate::Emulator::set_misbehave`]).
    pub fn start(link: Link) -> std::io::Result<Self> {
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
        let shared = Arc::new(Shared::default());
        shared.state().misbehave = link.emulator().misbehave();
        let shared2 = Arc::clone(&shared);
        let master = File::from(pty.master);
        let thread = std::thread::spawn(move || serve(link, master, pty.slave, &shared2));
        Ok(Self {
            path,
            shared,
            thread: Some(thread),
        })
    }

    /// The terminal's path (`/dev/pts/N`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops answering (the device hangs) or starts again. While muted,
    /// commands are still carried out and their answers dropped; the
    /// misbehaviour setting is left alone.
    pub fn set_mute(&self, on: bool) {
        self.shared.mute.store(on, Ordering::SeqCst);
    }

    /// Misbehaves on every answer from now on (see [`Misbehave`]);
    /// [`Misbehave::None`] behaves again.
    pub fn set_misbehave(&self, m: Misbehave) {
        let mut state = self.shared.state();
        state.misbehave = m;
        state.once = false;
    }

    /// Misbehaves on the next answer only, then behaves
    /// ([`Misbehave::None`]) again.
    pub fn set_misbehave_once(&self, m: Misbehave) {
        let mut state = self.shared.state();
        state.misbehave = m;
        state.once = m != Misbehave::None;
    }

    /// The setting the next answer gets.
    pub fn misbehave(&self) -> Misbehave {
        self.shared.state().misbehave
    }

    /// How many answers were misbehaved on so far: garbled, cut, replaced by
    /// a hang-up, or (for [`Misbehave::Slow`]) sent late — counted just
    /// before the late answer is written.
    pub fn misbehaved(&self) -> u64 {
        self.shared.state().misbehaved
    }

    /// How many requests the emulator has carried out so far, counted as
    /// each is complete: before a [`Misbehave::Slow`] answer's delay, and
    /// also for answers muted, garbled or cut.
    pub fn answered(&self) -> u64 {
        self.shared.state().answered
    }

    /// Waits until [`Self::answered`] reaches `at_least`, at most `timeout`;
    /// whether it did. (A test knows this way that the device holds a
    /// request, e.g. one whose answer is slow.)
    pub fn wait_answered(&self, at_least: u64, timeout: Duration) -> bool {
        self.wait_until(timeout, |s| s.answered >= at_least)
    }

    /// Waits until [`Self::misbehaved`] reaches `at_least`, at most
    /// `timeout`; whether it did.
    pub fn wait_misbehaved(&self, at_least: u64, timeout: Duration) -> bool {
        self.wait_until(timeout, |s| s.misbehaved >= at_least)
    }

    fn wait_until(&self, timeout: Duration, done: impl Fn(&State) -> bool) -> bool {
        let state = self.shared.state();
        let (state, _) = self
            .shared
            .changed
            .wait_timeout_while(state, timeout, |s| !done(s))
            .unwrap_or_else(PoisonError::into_inner);
        done(&state)
    }

    /// Whether the terminal was hung up ([`Misbehave::Close`]), or the
    /// serving thread stopped on an I/O error. A gone `EmuPty` never answers
    /// again.
    pub fn is_gone(&self) -> bool {
        self.shared.state().gone || self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl Drop for EmuPty {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What to do after one chunk of input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Continue,
    /// Forget the command state ([`Misbehave::ResetMidCommand`]).
    Reset,
    /// Close the terminal ([`Misbehave::Close`]).
    HangUp,
    /// Stop serving (write error, or asked to stop).
    Stop,
}

/// The serving thread. `_slave` is held open so the master does not see a
/// hang-up each time the host closes its side; dropping both hangs up.
fn serve(mut link: Link, mut master: File, _slave: OwnedFd, shared: &Shared) {
    let mut buf = [0u8; 512];
    while !shared.stop.load(Ordering::SeqCst) {
        let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(IDLE)) {
            Ok(0) => {
                link.idle();
                continue;
            }
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
        let n = match master.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut after = After::Continue;
        link.input_with(buf.get(..n).unwrap_or_default(), |answer| {
            shared.count_answered();
            if shared.mute.load(Ordering::SeqCst) {
                return true;
            }
            after = answer_one(&mut master, &answer, shared);
            after == After::Continue
        });
        match after {
            After::Continue => {}
            After::Reset => link.emulator_mut().bus_reset(),
            After::HangUp => {
                // Gone before the host can see the hang-up.
                shared.set_gone();
                drop(master);
                return;
            }
            After::Stop => break,
        }
    }
    shared.set_gone();
}

/// Sends one answer as the current [`Misbehave`] setting says.
fn answer_one(master: &mut File, answer: &[u8], shared: &Shared) -> After {
    let ready = Instant::now();
    let send = |master: &mut File, bytes: &[u8], then: After| match master.write_all(bytes) {
        Ok(()) => then,
        Err(_) => After::Stop,
    };
    match shared.take_mode() {
        Misbehave::None => send(master, answer, After::Continue),
        Misbehave::Garbage => {
            shared.count_misbehaved();
            send(master, &garble(answer), After::Continue)
        }
        Misbehave::Slow(delay) => {
            if !shared.sleep_until(ready + delay) {
                return After::Stop;
            }
            shared.count_misbehaved();
            send(master, answer, After::Continue)
        }
        Misbehave::Close => {
            shared.count_misbehaved();
            After::HangUp
        }
        Misbehave::ResetMidCommand => {
            shared.count_misbehaved();
            let half = answer.get(..answer.len() / 2).unwrap_or_default();
            send(master, half, After::Reset)
        }
    }
}

/// [`Misbehave::Garbage`]: as many bytes as `answer`, its length byte kept,
/// the rest a fixed pattern; the command byte never has the response bit.
fn garble(answer: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = (0..answer.len())
        .map(|i| {
            let i = u8::try_from(i % 256).unwrap_or_default();
            i.wrapping_mul(0x9d) ^ 0xa5
        })
        .collect();
    if let (Some(dst), Some(src)) = (out.first_mut(), answer.first()) {
        *dst = *src;
    }
    if let Some(cmd) = out.get_mut(1) {
        *cmd &= !RESPONSE_FLAG;
    }
    out
}
