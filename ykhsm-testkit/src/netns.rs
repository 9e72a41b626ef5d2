//! A network namespace of the test's own, joined to this one by a veth
//! pair: a server started inside it (`ip netns exec`) is reached at
//! [`Netns::inner_ip`], and [`Netns::cut`] takes the link down mid-stream
//! (packets are then dropped, not refused: a client waits until its own
//! deadline). Needs root and `ip` (iproute2). Removed on drop.
//! [`crate::postgres::Postgres::start_in`] runs a PostgreSQL server there.

use std::process::Command;

/// A namespace and the veth pair to it.
pub struct Netns {
    name: String,
    host_if: String,
    /// This side's address.
    pub host_ip: String,
    /// The namespace's address.
    pub inner_ip: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e} (apt-get install iproute2)"));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    /// A new namespace `ykt-<n>` with a /30 between it and this one.
    pub fn create() -> Self {
        // A subnet and names unique among concurrent tests of this process
        // and unlikely to meet another process's.
        let n: u16 = crate::random::<2>()
            .iter()
            .fold(0u16, |a, b| (a << 8) | u16::from(*b))
            % 4000;
        let name = format!("ykt-{}-{n}", std::process::id() % 10000);
        let host_if = format!("ykh{n}");
        let inner_if = format!("yki{n}");
        let (a, b) = (n / 64, (n % 64) * 4);
        let host_ip = format!("10.231.{a}.{}", b + 1);
        let inner_ip = format!("10.231.{a}.{}", b + 2);
        ip(&["netns", "add", &name]);
        let ns = Self {
            name,
            host_if,
            host_ip,
            inner_ip,
        };
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &inner_if,
        ]);
        ip(&["link", "set", &inner_if, "netns", &ns.name]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_ip),
            "dev",
            &ns.host_if,
        ]);
        ip(&["link", "set", &ns.host_if, "up"]);
        ns.exec_ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.inner_ip),
            "dev",
            &inner_if,
        ]);
        ns.exec_ip(&["link", "set", &inner_if, "up"]);
        ns.exec_ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn exec_ip(&self, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.name, "ip"];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// The namespace's name, for `ip netns exec <name> …`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command run inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Takes this side of the link down: the namespace is cut off, and
    /// what is sent to it is dropped.
    pub fn cut(&self) {
        ip(&["link", "set", &self.host_if, "down"]);
    }

    /// Brings the link up again.
    pub fn heal(&self) {
        ip(&["link", "set", &self.host_if, "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
