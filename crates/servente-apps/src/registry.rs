//! The upstream groups and apps of the running process, kept across config reloads so that
//! pooled connections, health state and app processes survive a reload that does not change
//! them.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use servente_config::Config;

use crate::pool::Address;
use crate::supervisor::Supervisor;
use crate::upstream::{Server, Upstream};

pub struct Registry {
    /// Configured upstreams by name, with the config they were built from.
    upstreams: Mutex<HashMap<String, (String, Arc<Upstream>)>>,
    pub supervisor: Arc<Supervisor>,
}

fn build(u: &servente_config::Upstream) -> Result<Arc<Upstream>, String> {
    let servers = u.servers.iter().map(|s| Address::parse(s).map(Server::new)).collect::<Result<Vec<_>, _>>()?;
    Ok(Upstream::new(&u.name, u.settings.clone(), servers))
}

impl Registry {
    pub fn new(data_dir: &Path) -> Arc<Registry> {
        Arc::new(Registry { upstreams: Mutex::new(HashMap::new()), supervisor: Supervisor::new(data_dir.to_path_buf()) })
    }

    /// Upstream objects for checking a config: nothing is started, nothing kept.
    pub fn detached(config: &Config) -> Result<HashMap<String, Arc<Upstream>>, Vec<String>> {
        let mut out = HashMap::new();
        let mut errors = Vec::new();
        for u in &config.upstreams {
            match build(u) {
                Ok(up) => {
                    out.insert(u.name.clone(), up);
                }
                Err(e) => errors.push(format!("{}: {e}", u.key)),
            }
        }
        for a in &config.apps {
            out.insert(a.name.clone(), Upstream::new(&a.name, a.upstream.clone(), Vec::new()));
        }
        if errors.is_empty() { Ok(out) } else { Err(errors) }
    }

    /// The upstreams of a config about to run: unchanged ones are kept (with their health
    /// state and pooled connections), new ones start their health checks, and apps are started,
    /// rolled or stopped to match. `base` is the config's folder (apps' working folders).
    pub fn prepare(&self, config: &Config, base: &Path) -> Result<HashMap<String, Arc<Upstream>>, Vec<String>> {
        let mut kept = self.upstreams.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = HashMap::new();
        let mut out = HashMap::new();
        let mut errors = Vec::new();
        for u in &config.upstreams {
            let fingerprint = format!("{:?}{:?}", u.servers, u.settings);
            let up = match kept.get(&u.name) {
                Some((f, up)) if *f == fingerprint => up.clone(),
                _ => match build(u) {
                    Ok(up) => {
                        up.start_health_checks();
                        up
                    }
                    Err(e) => {
                        errors.push(format!("{}: {e}", u.key));
                        continue;
                    }
                },
            };
            out.insert(u.name.clone(), up.clone());
            next.insert(u.name.clone(), (fingerprint, up));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        for (name, (_, old)) in kept.iter() {
            if next.get(name).is_none_or(|(_, new)| !Arc::ptr_eq(new, old)) {
                old.stop_health_checks();
            }
        }
        *kept = next;
        drop(kept);
        out.extend(self.supervisor.reconcile(&config.apps, base));
        Ok(out)
    }
}
