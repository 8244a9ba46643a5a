//! Supervised applications: servente starts each app's instances, tells each where to listen
//! (`PORT`, or `SOCKET_PATH`), sends it traffic once it answers its readiness check, restarts
//! it with backoff when it crashes (and gives up, marking the app failed, when it keeps
//! crashing), tags its output in servente's log, replaces instances one by one on a rolling
//! restart, and stops them with SIGTERM, a grace period, then SIGKILL.
//!
//! Each instance runs in its own process group, so signals reach the processes it started
//! too and none is left behind when servente stops them.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use servente_config::{App, AppListen};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::pool::Address;
use crate::upstream::{Server, Upstream, probe};

/// Lines of output kept per app for `servente app logs`.
const KEEP_LINES: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Starting,
    Running,
    /// Crashed too often; no longer restarted until a restart is asked for.
    Failed,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Starting => "starting",
            Status::Running => "running",
            Status::Failed => "failed",
            Status::Stopped => "stopped",
        }
    }
}

/// An instance as `servente app status` shows it.
#[derive(Debug, Clone)]
pub struct InstanceInfo {
    pub id: u32,
    pub pid: Option<u32>,
    pub address: String,
    pub ready: bool,
    pub started: SystemTime,
    pub restarts: u32,
}

struct Instance {
    info: InstanceInfo,
    stop: CancellationToken,
    done: Option<oneshot::Receiver<()>>,
}

struct State {
    status: Status,
    message: String,
    instances: Vec<Instance>,
    crashes: VecDeque<Instant>,
}

/// One configured app and its instances.
pub struct AppRuntime {
    pub name: String,
    spec: Mutex<(App, PathBuf)>,
    pub upstream: Arc<Upstream>,
    state: Mutex<State>,
    /// Shared with the tasks reading instances' output.
    logs: Arc<Mutex<VecDeque<String>>>,
    next_id: AtomicU32,
    data_dir: PathBuf,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AppRuntime {
    pub fn status(&self) -> (Status, String, Vec<InstanceInfo>) {
        let s = lock(&self.state);
        (s.status, s.message.clone(), s.instances.iter().map(|i| i.info.clone()).collect())
    }

    pub fn logs(&self, last: usize) -> Vec<String> {
        let l = lock(&self.logs);
        l.iter().skip(l.len().saturating_sub(last)).cloned().collect()
    }

    fn set_status(&self, status: Status, message: impl Into<String>) {
        let mut s = lock(&self.state);
        s.status = status;
        s.message = message.into();
    }

    /// Starts one more instance; the receiver says when it is ready (or dropped if it never is).
    fn spawn_instance(self: &Arc<Self>) -> oneshot::Receiver<()> {
        let id = self.next_id.fetch_add(1, Relaxed);
        let stop = CancellationToken::new();
        let (ready_tx, ready_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        lock(&self.state).instances.push(Instance {
            info: InstanceInfo { id, pid: None, address: String::new(), ready: false, started: SystemTime::now(), restarts: 0 },
            stop: stop.clone(),
            done: Some(done_rx),
        });
        let app = self.clone();
        tokio::spawn(async move {
            app.clone().run_instance(id, stop, Some(ready_tx)).await;
            lock(&app.state).instances.retain(|i| i.info.id != id);
            let _ = done_tx.send(());
        });
        ready_rx
    }

    fn update_instance(&self, id: u32, f: impl FnOnce(&mut InstanceInfo)) {
        if let Some(i) = lock(&self.state).instances.iter_mut().find(|i| i.info.id == id) {
            f(&mut i.info);
        }
    }

    /// Records a crash; true when the app has crashed too often and must stop restarting.
    fn crashed(&self) -> (bool, Duration) {
        let (max, window) = {
            let spec = lock(&self.spec);
            (spec.0.max_restarts, spec.0.restart_window.0)
        };
        let mut s = lock(&self.state);
        let now = Instant::now();
        s.crashes.push_back(now);
        while s.crashes.front().is_some_and(|t| now.duration_since(*t) > window) {
            s.crashes.pop_front();
        }
        let recent = s.crashes.len() as u32;
        let backoff = Duration::from_millis(500 * (1u64 << recent.min(6))).min(Duration::from_secs(30));
        (recent > max, backoff)
    }

    async fn run_instance(self: Arc<Self>, id: u32, stop: CancellationToken, mut ready_tx: Option<oneshot::Sender<()>>) {
        let mut restarts = 0;
        loop {
            let (spec, base) = lock(&self.spec).clone();
            let tag = format!("{}#{id}", self.name);
            let (address, env) = match listen_address(&spec, &self.data_dir, id) {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(app = %self.name, instance = id, "cannot find an address for the instance: {e}");
                    self.set_status(Status::Failed, format!("no address for an instance: {e}"));
                    return;
                }
            };
            let mut cmd = Command::new(&spec.command);
            cmd.args(&spec.args)
                .current_dir(spec.dir.as_ref().map(|d| base.join(d)).unwrap_or_else(|| base.clone()))
                .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .envs(env)
                .env("SERVENTE_APP", &self.name)
                .env("SERVENTE_INSTANCE", id.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .kill_on_drop(true);
            let outcome = match cmd.spawn() {
                Ok(child) => self.supervise(id, &tag, child, &address, &spec, &stop, &mut ready_tx).await,
                Err(e) => {
                    tracing::error!(app = %self.name, instance = id, "cannot start `{}`: {e}", spec.command);
                    Outcome::Crashed(format!("cannot start `{}`: {e}", spec.command))
                }
            };
            match outcome {
                Outcome::Stopped => return,
                Outcome::Crashed(why) => {
                    let (give_up, backoff) = self.crashed();
                    if give_up {
                        tracing::error!(app = %self.name, instance = id, "{why}; crashed too often, not restarting (fix it, then `servente app restart {}`)", self.name);
                        self.set_status(Status::Failed, format!("crashed too often: {why}"));
                        return;
                    }
                    tracing::warn!(app = %self.name, instance = id, "{why}; restarting in {backoff:?}");
                    restarts += 1;
                    self.update_instance(id, |i| {
                        i.restarts = restarts;
                        i.ready = false;
                        i.pid = None;
                    });
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn supervise(
        &self,
        id: u32,
        tag: &str,
        mut child: Child,
        address: &Address,
        spec: &App,
        stop: &CancellationToken,
        ready_tx: &mut Option<oneshot::Sender<()>>,
    ) -> Outcome {
        let pid = child.id();
        self.update_instance(id, |i| {
            i.pid = pid;
            i.address = address.to_string();
            i.started = SystemTime::now();
        });
        for (stream, reader) in [
            ("stdout", child.stdout.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>)),
            ("stderr", child.stderr.take().map(|s| Box::new(s) as _)),
        ] {
            let Some(reader) = reader else { continue };
            let name = self.name.clone();
            let tag = tag.to_string();
            let logs = LogSink { app: name, tag, stream };
            let weak = Arc::downgrade(&self.logs);
            tokio::spawn(async move {
                let mut lines = BufReader::new(reader).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::info!(target: "app", app = %logs.app, instance = %logs.tag, stream = logs.stream, "{line}");
                    if let Some(l) = weak.upgrade() {
                        let mut l = lock(&l);
                        if l.len() == KEEP_LINES {
                            l.pop_front();
                        }
                        l.push_back(format!("{} {}: {line}", logs.tag, logs.stream));
                    }
                }
            });
        }
        // Readiness: the instance gets traffic once its ready path answers below 500.
        let deadline = Instant::now() + spec.ready_timeout.0;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Outcome::Crashed(format!("exited with {status} before it was ready"));
            }
            if stop.is_cancelled() {
                terminate(&mut child, spec.stop_grace.0).await;
                return Outcome::Stopped;
            }
            if probe(address, spec.upstream.protocol, &spec.ready_path, Duration::from_secs(2)).await.is_ok_and(|s| s < 500) {
                break;
            }
            if Instant::now() > deadline {
                terminate(&mut child, spec.stop_grace.0).await;
                return Outcome::Crashed(format!("not ready within {:?}", spec.ready_timeout.0));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let server = Server::new(address.clone());
        let mut servers = (*self.upstream.servers()).clone();
        servers.push(server.clone());
        self.upstream.set_servers(servers);
        self.update_instance(id, |i| i.ready = true);
        self.set_status(Status::Running, "");
        tracing::info!(app = %self.name, instance = id, address = %address, "instance ready");
        if let Some(tx) = ready_tx.take() {
            let _ = tx.send(());
        }
        let outcome = tokio::select! {
            status = child.wait() => Outcome::Crashed(match status {
                Ok(s) => format!("exited with {s}"),
                Err(e) => format!("cannot be watched: {e}"),
            }),
            _ = stop.cancelled() => {
                // Drain: no new requests, then wait for those in flight (bounded by the grace).
                server.drain();
                let until = Instant::now() + spec.stop_grace.0;
                while server.in_flight() > 0 && Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                self.remove_server(&server);
                terminate(&mut child, spec.stop_grace.0).await;
                tracing::info!(app = %self.name, instance = id, "instance stopped");
                return Outcome::Stopped;
            }
        };
        self.remove_server(&server);
        outcome
    }

    fn remove_server(&self, server: &Arc<Server>) {
        let servers: Vec<Arc<Server>> = self.upstream.servers().iter().filter(|s| s.id != server.id).cloned().collect();
        self.upstream.set_servers(servers);
    }
}

struct LogSink {
    app: String,
    tag: String,
    stream: &'static str,
}

enum Outcome {
    Stopped,
    Crashed(String),
}

/// Where an instance listens, and the environment that tells it.
fn listen_address(spec: &App, data_dir: &Path, id: u32) -> std::io::Result<(Address, Vec<(String, String)>)> {
    match spec.listen {
        AppListen::Unix => {
            let dir = data_dir.join("apps");
            std::fs::create_dir_all(&dir)?;
            let path = dir.join(format!("{}-{id}.sock", spec.name));
            let _ = std::fs::remove_file(&path);
            Ok((Address::Unix(path.clone()), vec![("SOCKET_PATH".into(), path.display().to_string())]))
        }
        AppListen::Port => {
            // Ask the kernel for a free port, then hand it over; another process could take it
            // in between, which the readiness check would then catch as a crash and retry.
            let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            Ok((Address::Tcp(addr), vec![("PORT".into(), port.to_string()), ("HOST".into(), "127.0.0.1".into())]))
        }
    }
}

/// SIGTERM to the instance's process group, SIGKILL after `grace`.
async fn terminate(child: &mut Child, grace: Duration) {
    let Some(pid) = child.id().and_then(|p| rustix::process::Pid::from_raw(p as i32)) else { return };
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::TERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        let _ = child.wait().await;
    }
    // Whatever the group leader left behind goes too.
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
}

/// Every app of the process.
pub struct Supervisor {
    apps: Mutex<HashMap<String, Arc<AppRuntime>>>,
    data_dir: PathBuf,
}

impl Supervisor {
    pub fn new(data_dir: PathBuf) -> Arc<Supervisor> {
        Arc::new(Supervisor { apps: Mutex::new(HashMap::new()), data_dir })
    }

    pub fn app(&self, name: &str) -> Option<Arc<AppRuntime>> {
        lock(&self.apps).get(name).cloned()
    }

    pub fn apps(&self) -> Vec<Arc<AppRuntime>> {
        let mut v: Vec<_> = lock(&self.apps).values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Brings the running apps in line with a config: starts new apps, rolls changed ones,
    /// stops removed ones. Returns each app's upstream.
    pub fn reconcile(self: &Arc<Self>, apps: &[App], base: &Path) -> HashMap<String, Arc<Upstream>> {
        let mut out = HashMap::new();
        let mut running = lock(&self.apps);
        let wanted: Vec<&str> = apps.iter().map(|a| a.name.as_str()).collect();
        for (name, app) in running.iter() {
            if !wanted.contains(&name.as_str()) {
                let app = app.clone();
                tokio::spawn(async move { app.stop_all().await });
            }
        }
        running.retain(|name, _| wanted.contains(&name.as_str()));
        for spec in apps {
            match running.get(&spec.name) {
                Some(rt) => {
                    let changed = {
                        let mut current = lock(&rt.spec);
                        let changed = format!(
                            "{:?}",
                            (&current.0.command, &current.0.args, &current.0.env, &current.0.dir, current.0.instances, current.0.listen)
                        ) != format!("{:?}", (&spec.command, &spec.args, &spec.env, &spec.dir, spec.instances, spec.listen))
                            || current.1 != base;
                        *current = (spec.clone(), base.to_path_buf());
                        changed
                    };
                    if changed {
                        let rt = rt.clone();
                        tokio::spawn(async move {
                            if let Err(e) = rt.restart().await {
                                tracing::error!(app = %rt.name, "rolling restart after a config change failed: {e}");
                            }
                        });
                    }
                    out.insert(spec.name.clone(), rt.upstream.clone());
                }
                None => {
                    let rt = Arc::new(AppRuntime {
                        name: spec.name.clone(),
                        spec: Mutex::new((spec.clone(), base.to_path_buf())),
                        upstream: Upstream::new(&spec.name, spec.upstream.clone(), Vec::new()),
                        state: Mutex::new(State {
                            status: Status::Starting,
                            message: String::new(),
                            instances: Vec::new(),
                            crashes: VecDeque::new(),
                        }),
                        logs: Arc::new(Mutex::new(VecDeque::new())),
                        next_id: AtomicU32::new(1),
                        data_dir: self.data_dir.clone(),
                    });
                    rt.upstream.start_health_checks();
                    for _ in 0..spec.instances {
                        rt.spawn_instance();
                    }
                    out.insert(spec.name.clone(), rt.upstream.clone());
                    running.insert(spec.name.clone(), rt);
                }
            }
        }
        out
    }

    /// Stops every instance of every app (SIGTERM, grace, SIGKILL), all at once.
    pub async fn shutdown(&self) {
        let apps: Vec<_> = lock(&self.apps).drain().map(|(_, a)| a).collect();
        futures_util::future::join_all(apps.iter().map(|a| a.stop_all())).await;
    }
}

impl AppRuntime {
    /// Stops every instance and waits until they are gone.
    pub async fn stop_all(&self) {
        let waits: Vec<_> = {
            let mut s = lock(&self.state);
            s.status = Status::Stopped;
            s.instances
                .iter_mut()
                .map(|i| {
                    i.stop.cancel();
                    i.done.take()
                })
                .collect()
        };
        for w in waits.into_iter().flatten() {
            let _ = w.await;
        }
    }

    /// Rolling restart with no downtime: for each instance, start a new one, wait until it is
    /// ready (it then gets traffic), then drain and stop an old one. If a new instance does not
    /// become ready, the old ones keep serving and the restart stops there.
    pub async fn restart(self: &Arc<Self>) -> Result<(), String> {
        let (instances, ready_timeout) = {
            let spec = lock(&self.spec);
            (spec.0.instances, spec.0.ready_timeout.0)
        };
        let old: Vec<(CancellationToken, Option<oneshot::Receiver<()>>)> = {
            let mut s = lock(&self.state);
            s.crashes.clear();
            if s.status == Status::Failed {
                s.status = Status::Starting;
            }
            s.instances.iter_mut().map(|i| (i.stop.clone(), i.done.take())).collect()
        };
        tracing::info!(app = %self.name, old = old.len(), new = instances, "rolling restart");
        let mut old = old.into_iter();
        for _ in 0..instances {
            let ready = self.spawn_instance();
            match tokio::time::timeout(ready_timeout + Duration::from_secs(5), ready).await {
                Ok(Ok(())) => {}
                _ => return Err("a new instance did not become ready; the old ones keep serving".into()),
            }
            if let Some((stop, done)) = old.next() {
                stop.cancel();
                if let Some(done) = done {
                    let _ = done.await;
                }
            }
        }
        for (stop, done) in old {
            stop.cancel();
            if let Some(done) = done {
                let _ = done.await;
            }
        }
        Ok(())
    }
}
