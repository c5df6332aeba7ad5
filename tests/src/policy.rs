//! Files the proxy watches, written the way production writes them: the policy TOML (in place,
//! by atomic rename, or as a Kubernetes ConfigMap's `..data` symlink swap) and the downward-API
//! labels file.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A host entry: where the proxy must dial a name instead of resolving it.
#[derive(Clone, Debug)]
pub struct HostPin {
    /// Host name (`[hosts."<name>"]`).
    pub name: String,
    /// Addresses to dial.
    pub pin: Vec<IpAddr>,
    /// Port to dial (default 443 in the proxy).
    pub port: Option<u16>,
    /// CIDRs that make non-public pinned addresses dialable.
    pub allow_ranges: Vec<String>,
    /// `ech = true`: tunnel ClientHellos carrying ECH for this host.
    pub ech: bool,
}

/// A policy file, as tests need it; [`PolicySpec::to_toml`] renders version 1.
#[derive(Clone, Debug)]
pub struct PolicySpec {
    /// `agent` or `verification`.
    pub phase: String,
    /// `[intercept] hosts`.
    pub intercept: Vec<String>,
    /// `[tunnel] allow`.
    pub allow: Vec<String>,
    /// `[tunnel] deny`.
    pub deny: Vec<String>,
    /// `[tunnel] connect_timeout`.
    pub connect_timeout: String,
    /// `[tunnel] idle_timeout`.
    pub idle_timeout: String,
    /// `[hosts.*]` entries.
    pub hosts: Vec<HostPin>,
    /// TOML appended as written, for tables this builder does not model (e.g. `[capture]`).
    pub extra: Vec<String>,
}

impl Default for PolicySpec {
    fn default() -> PolicySpec {
        PolicySpec {
            phase: "agent".into(),
            intercept: vec!["openrouter.ai".into()],
            allow: Vec::new(),
            deny: Vec::new(),
            connect_timeout: "2s".into(),
            idle_timeout: "30s".into(),
            hosts: Vec::new(),
            extra: Vec::new(),
        }
    }
}

impl PolicySpec {
    /// Agent phase, intercept openrouter.ai, nothing else.
    pub fn new() -> PolicySpec {
        PolicySpec::default()
    }

    /// Sets the policy's phase.
    pub fn phase(mut self, phase: &str) -> PolicySpec {
        self.phase = phase.into();
        self
    }

    /// Adds allow-list patterns.
    pub fn allow(mut self, hosts: &[&str]) -> PolicySpec {
        self.allow.extend(hosts.iter().map(|h| h.to_string()));
        self
    }

    /// Adds deny-list patterns.
    pub fn deny(mut self, hosts: &[&str]) -> PolicySpec {
        self.deny.extend(hosts.iter().map(|h| h.to_string()));
        self
    }

    /// Pins `name` to `ips:port` with no `allow_ranges`.
    pub fn pin(mut self, name: &str, ips: &[IpAddr], port: u16) -> PolicySpec {
        self.hosts.push(HostPin {
            name: name.into(),
            pin: ips.to_vec(),
            port: Some(port),
            allow_ranges: Vec::new(),
            ech: false,
        });
        self
    }

    /// Pins `name` to `127.0.0.1:port` with the `127.0.0.0/8` allowance loopback needs.
    pub fn pin_loopback(mut self, name: &str, port: u16) -> PolicySpec {
        self.hosts.push(HostPin {
            name: name.into(),
            pin: vec![IpAddr::from([127, 0, 0, 1])],
            port: Some(port),
            allow_ranges: vec!["127.0.0.0/8".into()],
            ech: false,
        });
        self
    }

    /// Sets `ech = true` on the `[hosts]` entry of `name` (pin it first).
    pub fn ech(mut self, name: &str) -> PolicySpec {
        let host = self.hosts.iter_mut().find(|h| h.name == name);
        host.expect("ech() needs a pinned host entry").ech = true;
        self
    }

    /// Appends `toml` to the file as written (tables after `[hosts]`, such as `[capture]`).
    pub fn raw(mut self, toml: &str) -> PolicySpec {
        self.extra.push(toml.into());
        self
    }

    /// The policy as TOML.
    pub fn to_toml(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "version = 1\nphase = {}\n", q(&self.phase));
        let _ = writeln!(s, "[intercept]\nhosts = {}\n", list(&self.intercept));
        let _ = writeln!(
            s,
            "[tunnel]\nallow = {}\ndeny = {}\nconnect_timeout = {}\nidle_timeout = {}",
            list(&self.allow),
            list(&self.deny),
            q(&self.connect_timeout),
            q(&self.idle_timeout)
        );
        for h in &self.hosts {
            let pins: Vec<String> = h.pin.iter().map(|ip| ip.to_string()).collect();
            let _ = write!(s, "\n[hosts.{}]\npin = {}\n", q(&h.name), list(&pins));
            if let Some(port) = h.port {
                let _ = writeln!(s, "port = {port}");
            }
            if !h.allow_ranges.is_empty() {
                let _ = writeln!(s, "allow_ranges = {}", list(&h.allow_ranges));
            }
            if h.ech {
                let _ = writeln!(s, "ech = true");
            }
        }
        for extra in &self.extra {
            let _ = write!(s, "\n{extra}\n");
        }
        s
    }

    /// Writes the policy to `path` by atomic rename.
    pub fn write(&self, path: &Path) -> Result<()> {
        write_atomic(path, self.to_toml().as_bytes())
    }
}

fn q(s: &str) -> String {
    // A JSON string of printable ASCII is a valid TOML basic string.
    serde_json::Value::from(s).to_string()
}

fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| q(i)).collect();
    format!("[{}]", quoted.join(", "))
}

/// Writes `contents` next to `path` and renames it over `path` (what most tools and editors do).
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = path.parent().context("path has a parent")?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, contents)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("rename over {}", path.display()))?;
    Ok(())
}

/// A downward-API labels file body (`key="value"` lines) with `phase` under `ridges.ai/phase`.
pub fn labels_file_body(phase: Option<&str>) -> String {
    let mut s = String::from("app=\"agent-sandbox\"\npod-template-hash=\"7d9f8c6b5\"\n");
    if let Some(p) = phase {
        let _ = writeln!(s, "ridges.ai/phase=\"{p}\"");
    }
    s
}

/// A directory laid out like a mounted ConfigMap or downward-API volume, updated the way the
/// kubelet's atomic writer does it: each version in a fresh `..<timestamp>` directory, a
/// `..data` symlink to the current one swapped by rename, and the visible file a symlink
/// through `..data`.
pub struct ConfigMapDir {
    dir: PathBuf,
    file: String,
    generation: u32,
    current: Option<PathBuf>,
}

impl ConfigMapDir {
    /// Lays out `dir` with `file` holding `contents`.
    pub fn create(dir: &Path, file: &str, contents: &[u8]) -> Result<ConfigMapDir> {
        std::fs::create_dir_all(dir)?;
        let mut cm = ConfigMapDir {
            dir: dir.to_path_buf(),
            file: file.into(),
            generation: 0,
            current: None,
        };
        cm.update(contents)?;
        std::os::unix::fs::symlink(Path::new("..data").join(file), dir.join(file))?;
        Ok(cm)
    }

    /// The path the proxy should be given (`dir/file`, a symlink).
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.file)
    }

    /// Publishes a new version: new timestamped dir, `..data_tmp` → it, rename over `..data`,
    /// then remove the previous version's directory.
    pub fn update(&mut self, contents: &[u8]) -> Result<()> {
        self.generation += 1;
        let ts = format!(
            "..2026_11_28_07_00_{:02}.{:09}",
            self.generation,
            std::process::id()
        );
        let ts_dir = self.dir.join(&ts);
        std::fs::create_dir(&ts_dir)?;
        std::fs::write(ts_dir.join(&self.file), contents)?;
        let tmp_link = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp_link);
        std::os::unix::fs::symlink(&ts, &tmp_link)?;
        std::fs::rename(&tmp_link, self.dir.join("..data"))?;
        if let Some(old) = self.current.replace(ts_dir) {
            std::fs::remove_dir_all(old)?;
        }
        Ok(())
    }
}
