//! A [`Driver`] made of several: one Hangar runs sandboxes and, for clouds
//! that ask for it, Docker containers, while the controller keeps talking
//! to a single driver.
//!
//! Routing:
//!
//! * [`Driver::create`] goes where the spec's [`labels::DRIVER`] label says
//!   (absent, or the default's own name: the default driver). A name with
//!   no driver is refused with the reason this Hangar has none (say, no
//!   Docker engine answered at start), so the instance's status tells the
//!   user why instead of a bare "unknown driver".
//! * Every other call goes to the driver that holds the replica: the set
//!   remembers which from `create` and `list`; a replica it has not seen
//!   (adopted by another call path, or made before a restart) is looked up
//!   with each driver's [`Driver::inspect`].
//! * [`Driver::list`] is every driver's replicas together; a driver that
//!   fails to list fails the whole list, since the controller would
//!   otherwise take its replicas for gone.
//!
//! It is not a scheduler: it never picks a driver itself.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::driver::{
    labels, Driver, DriverError, ExecResult, Exit, OutputEvent, Refusal, ReplicaInfo, ReplicaSpec,
    ReplicaStats, StdinWait,
};

/// See the module docs.
pub struct DriverSet {
    /// `drivers[0]` is the default; the others are named in `names`.
    drivers: Vec<Arc<dyn Driver>>,
    /// Driver name → index in `drivers`.
    names: BTreeMap<String, usize>,
    /// Drivers this Hangar lacks → why (said when a spec asks for one).
    missing: BTreeMap<String, String>,
    /// Replica id → index in `drivers`, as learned from `create` and `list`.
    routes: Mutex<HashMap<String, usize>>,
}

impl std::fmt::Debug for DriverSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriverSet")
            .field("default", &self.drivers[0].name())
            .field("named", &self.names.keys().collect::<Vec<_>>())
            .field("missing", &self.missing)
            .finish_non_exhaustive()
    }
}

impl DriverSet {
    /// A set whose replicas all go to `default` until others are added.
    pub fn new(default: Arc<dyn Driver>) -> Self {
        Self {
            drivers: vec![default],
            names: BTreeMap::new(),
            missing: BTreeMap::new(),
            routes: Mutex::new(HashMap::new()),
        }
    }

    /// Specs labelled `hangar.driver=<name>` go to `driver`.
    #[must_use]
    pub fn with(mut self, name: &str, driver: Arc<dyn Driver>) -> Self {
        self.missing.remove(name);
        self.drivers.push(driver);
        self.names.insert(name.to_owned(), self.drivers.len() - 1);
        self
    }

    /// This Hangar has no driver `name`, because of `reason` (a sentence
    /// fragment, e.g. "no Docker engine answered at start (…)"): specs
    /// asking for it are refused with it. A driver added under that name
    /// ([`DriverSet::with`]) wins.
    #[must_use]
    pub fn without(mut self, name: &str, reason: impl Into<String>) -> Self {
        if !self.names.contains_key(name) {
            self.missing.insert(name.to_owned(), reason.into());
        }
        self
    }

    /// Whether specs may ask for driver `name`.
    pub fn has(&self, name: &str) -> bool {
        name == self.drivers[0].name() || self.names.contains_key(name)
    }

    fn routes(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The driver a new replica of `spec` goes to.
    fn for_spec(&self, spec: &ReplicaSpec) -> Result<usize, DriverError> {
        let Some(name) = spec.labels.get(labels::DRIVER) else {
            return Ok(0);
        };
        if let Some(&index) = self.names.get(name) {
            return Ok(index);
        }
        if name == self.drivers[0].name() {
            return Ok(0);
        }
        Err(DriverError::Invalid(match self.missing.get(name) {
            Some(reason) => format!("this Hangar has no {name} driver: {reason}"),
            None => format!("this Hangar has no {name} driver"),
        }))
    }

    /// The driver holding replica `id`: remembered, else found by asking
    /// each one (and then remembered).
    async fn for_replica(&self, id: &str) -> Result<usize, DriverError> {
        if let Some(&index) = self.routes().get(id) {
            return Ok(index);
        }
        for (index, driver) in self.drivers.iter().enumerate() {
            match driver.inspect(id).await {
                Ok(_) => {
                    self.routes().insert(id.to_owned(), index);
                    return Ok(index);
                }
                Err(DriverError::NotFound(_)) => {}
                Err(err) => return Err(err),
            }
        }
        Err(DriverError::NotFound(id.to_owned()))
    }

    async fn driver_of(&self, id: &str) -> Result<&dyn Driver, DriverError> {
        let index = self.for_replica(id).await?;
        Ok(self.drivers[index].as_ref())
    }
}

#[async_trait::async_trait]
impl Driver for DriverSet {
    fn name(&self) -> &'static str {
        self.drivers[0].name()
    }

    async fn create(&self, spec: &ReplicaSpec) -> Result<ReplicaInfo, DriverError> {
        let index = self.for_spec(spec)?;
        let info = self.drivers[index].create(spec).await?;
        self.routes().insert(info.id.clone(), index);
        Ok(info)
    }

    async fn list(&self) -> Result<Vec<ReplicaInfo>, DriverError> {
        let mut all = Vec::new();
        let mut found = Vec::new();
        for (index, driver) in self.drivers.iter().enumerate() {
            let replicas = driver.list().await.map_err(|err| match err {
                DriverError::Failed(why) => {
                    DriverError::Failed(format!("the {} driver cannot list: {why}", driver.name()))
                }
                other => other,
            })?;
            found.extend(replicas.iter().map(|r| (r.id.clone(), index)));
            all.extend(replicas);
        }
        self.routes().extend(found);
        Ok(all)
    }

    async fn inspect(&self, id: &str) -> Result<ReplicaInfo, DriverError> {
        let index = self.for_replica(id).await?;
        let result = self.drivers[index].inspect(id).await;
        if matches!(result, Err(DriverError::NotFound(_))) {
            self.routes().remove(id);
        }
        result
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<Exit, DriverError> {
        self.driver_of(id).await?.stop(id, grace).await
    }

    async fn remove(&self, id: &str) -> Result<(), DriverError> {
        let index = match self.for_replica(id).await {
            Ok(index) => index,
            // Unknown everywhere: already gone, which is success.
            Err(DriverError::NotFound(_)) => return Ok(()),
            Err(err) => return Err(err),
        };
        self.drivers[index].remove(id).await?;
        self.routes().remove(id);
        Ok(())
    }

    async fn exec(
        &self,
        id: &str,
        argv: &[String],
        env: &[(String, String)],
        timeout: Duration,
    ) -> Result<ExecResult, DriverError> {
        self.driver_of(id).await?.exec(id, argv, env, timeout).await
    }

    async fn stdin(&self, id: &str, input: &[u8], wait: StdinWait) -> Result<String, DriverError> {
        self.driver_of(id).await?.stdin(id, input, wait).await
    }

    async fn follow(
        &self,
        id: &str,
        after: u64,
    ) -> Result<mpsc::Receiver<OutputEvent>, DriverError> {
        self.driver_of(id).await?.follow(id, after).await
    }

    async fn stats(&self, id: &str) -> Result<ReplicaStats, DriverError> {
        self.driver_of(id).await?.stats(id).await
    }

    async fn take_refusals(&self) -> Result<Vec<Refusal>, DriverError> {
        let mut all = Vec::new();
        for driver in &self.drivers {
            all.extend(driver.take_refusals().await?);
        }
        Ok(all)
    }

    async fn resync(&self) -> Result<(), DriverError> {
        // Every driver, whatever one of them says.
        let mut failures = Vec::new();
        for driver in &self.drivers {
            if let Err(err) = driver.resync().await {
                failures.push(format!("the {} driver: {err}", driver.name()));
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(DriverError::Failed(failures.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{Call, FakeDriver};

    fn spec(id: &str, driver: Option<&str>) -> ReplicaSpec {
        let mut labels = BTreeMap::new();
        if let Some(driver) = driver {
            labels.insert(labels::DRIVER.to_owned(), driver.to_owned());
        }
        ReplicaSpec {
            id: id.to_owned(),
            labels,
            argv: vec!["true".to_owned()],
            env: Vec::new(),
            cwd: "/".to_owned(),
            app: None,
            app_writable: false,
            port: Some(8080),
            stdin: false,
            cpu_millis: 100,
            cpu_limit_millis: None,
            memory_limit_bytes: None,
            pids_limit: 64,
            rootfs: None,
            user: None,
            image: None,
            image_auth: None,
            network: Default::default(),
        }
    }

    fn set() -> (Arc<FakeDriver>, Arc<FakeDriver>, DriverSet) {
        let sandbox = Arc::new(FakeDriver::new());
        let docker = Arc::new(FakeDriver::new());
        let set = DriverSet::new(sandbox.clone()).with("docker", docker.clone());
        (sandbox, docker, set)
    }

    fn ids(driver: &FakeDriver) -> Vec<String> {
        driver.replicas().into_iter().map(|r| r.id).collect()
    }

    #[tokio::test]
    async fn creates_go_where_the_driver_label_says() {
        let (sandbox, docker, set) = set();
        set.create(&spec("a", None)).await.expect("default");
        set.create(&spec("b", Some("docker")))
            .await
            .expect("docker");
        // The default's own name routes to it too.
        set.create(&spec("c", Some("fake")))
            .await
            .expect("named default");
        assert_eq!(ids(&sandbox), ["a", "c"]);
        assert_eq!(ids(&docker), ["b"]);
        assert_eq!(set.name(), "fake");
        assert!(set.has("docker") && set.has("fake") && !set.has("kubernetes"));
    }

    #[tokio::test]
    async fn a_missing_driver_is_refused_with_the_reason_given() {
        let sandbox = Arc::new(FakeDriver::new());
        let set = DriverSet::new(sandbox.clone()).without(
            "docker",
            "no Docker engine answered at start (connection refused)",
        );
        let err = set
            .create(&spec("a", Some("docker")))
            .await
            .expect_err("no docker");
        let text = err.to_string();
        assert!(matches!(err, DriverError::Invalid(_)), "{err:?}");
        assert!(text.contains("this Hangar has no docker driver"), "{text}");
        assert!(text.contains("connection refused"), "{text}");
        let err = set
            .create(&spec("b", Some("kubernetes")))
            .await
            .expect_err("no kubernetes");
        assert!(err.to_string().contains("no kubernetes driver"), "{err}");
        assert!(sandbox.calls().is_empty(), "nothing reached the default");
    }

    #[tokio::test]
    async fn calls_on_a_replica_go_to_the_driver_that_holds_it() {
        let (sandbox, docker, set) = set();
        set.create(&spec("a", None)).await.expect("a");
        set.create(&spec("b", Some("docker"))).await.expect("b");
        set.exec("b", &["ls".to_owned()], &[], Duration::from_secs(1))
            .await
            .expect("exec");
        set.stop("b", Duration::ZERO).await.expect("stop");
        set.stdin(
            "a",
            b"hi",
            StdinWait {
                quiet: Duration::ZERO,
                timeout: Duration::ZERO,
            },
        )
        .await
        .expect("stdin");
        set.stats("a").await.expect("stats");
        set.remove("b").await.expect("remove");
        assert!(docker
            .calls()
            .contains(&Call::Exec("b".into(), vec!["ls".into()])));
        assert!(docker
            .calls()
            .contains(&Call::Stop("b".into(), Duration::ZERO)));
        assert!(docker.calls().contains(&Call::Remove("b".into())));
        assert!(sandbox
            .calls()
            .contains(&Call::Stdin("a".into(), b"hi".to_vec())));
        assert!(!sandbox
            .calls()
            .iter()
            .any(|c| matches!(c, Call::Exec(..) | Call::Stop(..) | Call::Remove(..))));
        assert_eq!(ids(&docker), Vec::<String>::new());
    }

    #[tokio::test]
    async fn replicas_it_never_saw_are_found_by_asking_each_driver() {
        let (sandbox, docker, _) = set();
        // Made before a restart: a fresh set knows nothing of them.
        sandbox.create(&spec("old-a", None)).await.expect("a");
        docker.create(&spec("old-b", None)).await.expect("b");
        let set = DriverSet::new(sandbox.clone()).with("docker", docker.clone());
        assert_eq!(set.inspect("old-b").await.expect("inspect").id, "old-b");
        let mut follow = set.follow("old-b", 0).await.expect("follow");
        set.stop("old-b", Duration::from_secs(1))
            .await
            .expect("stop");
        assert!(matches!(follow.recv().await, Some(OutputEvent::End(_))));
        assert!(matches!(
            set.inspect("nowhere").await,
            Err(DriverError::NotFound(id)) if id == "nowhere"
        ));
        assert!(matches!(
            set.stats("nowhere").await,
            Err(DriverError::NotFound(_))
        ));
        // Removing what no driver has is success, as for every driver.
        set.remove("nowhere")
            .await
            .expect("unknown ids are success");
        assert!(!sandbox.calls().iter().any(|c| matches!(c, Call::Stop(..))));
    }

    #[tokio::test]
    async fn list_merges_every_driver_and_teaches_the_routes() {
        let (sandbox, docker, _) = set();
        sandbox.create(&spec("a", None)).await.expect("a");
        docker.create(&spec("b", None)).await.expect("b");
        let set = DriverSet::new(sandbox.clone()).with("docker", docker.clone());
        let mut listed: Vec<String> = set
            .list()
            .await
            .expect("list")
            .into_iter()
            .map(|r| r.id)
            .collect();
        listed.sort();
        assert_eq!(listed, ["a", "b"]);
        assert_eq!(set.routes().get("b"), Some(&1));
        set.remove("b").await.expect("remove");
        assert!(set.routes().get("b").is_none(), "forgotten once removed");
        assert_eq!(ids(&docker), Vec::<String>::new());
        assert_eq!(ids(&sandbox), ["a"]);
    }

    #[tokio::test]
    async fn a_replica_removed_behind_its_back_is_forgotten() {
        let (_, docker, set) = set();
        set.create(&spec("b", Some("docker"))).await.expect("b");
        docker.remove("b").await.expect("gone underneath");
        assert!(matches!(
            set.inspect("b").await,
            Err(DriverError::NotFound(_))
        ));
        assert!(set.routes().get("b").is_none());
    }
}
