//! Data-parallel training on Burn's collective engine (`burn::collective`): one peer (a thread
//! and a model replica) per device, on one node (process) or several joined by Burn's global
//! orchestrator. Every peer loads the same global batch, trains its contiguous shard of it, and
//! the peers' gradients are summed by one all-reduce per step, so every peer takes the same
//! update. Peers are numbered `node_rank · devices + local index`; peer 0 writes the run
//! directory.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use burn::collective::{self, AllReduceStrategy, CollectiveConfig, PeerId, ReduceOperation};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::{AutodiffBackend, DeviceId};
use burn::tensor::TensorPrimitive;
use emulsion_config::Invalid;
use serde::{Deserialize, Serialize};

/// The `[distributed]` section: the devices this node trains on, and how the nodes meet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistributedConfig {
    /// Device indices (of `run.device`'s backend) this node trains on, one peer each; empty:
    /// device 0 alone. A device listed twice runs two peers on it (the collective on one GPU,
    /// with no speed-up).
    pub devices: Vec<u16>,
    /// Nodes (processes, usually machines) in the run, each with as many devices.
    pub nodes: usize,
    /// This node's number, 0 to `nodes - 1`; node 0 writes the run directory.
    pub node_rank: usize,
    /// `HOST:PORT` of Burn's global orchestrator, which every node connects to (`nodes > 1`).
    pub coordinator: Option<String>,
    /// Node 0 starts the orchestrator at `coordinator`'s port; false when `emulsion
    /// coordinator` runs it apart.
    pub start_coordinator: bool,
    /// This node's address as the other nodes reach it (its tensor data service).
    pub node_address: String,
    /// Port of this node's tensor data service; 0: `coordinator`'s port + 1 + `node_rank`.
    pub data_port: u16,
    /// Seconds a peer waits for the others at an all-reduce before it stops with an error
    /// naming them (the first step's wait includes the slowest peer's kernel compilation; on
    /// one node the writer's checkpoints, sample grids and FID do not count, across nodes they
    /// do).
    pub timeout_s: f64,
}

impl Default for DistributedConfig {
    fn default() -> Self {
        Self {
            devices: Vec::new(),
            nodes: 1,
            node_rank: 0,
            coordinator: None,
            start_coordinator: true,
            node_address: "127.0.0.1".into(),
            data_port: 0,
            timeout_s: 600.0,
        }
    }
}

impl DistributedConfig {
    /// The device indices of this node's peers.
    pub fn device_indices(&self) -> Vec<u16> {
        if self.devices.is_empty() { vec![0] } else { self.devices.clone() }
    }

    /// Peers in the whole run.
    pub fn peer_count(&self) -> usize {
        self.nodes * self.device_indices().len()
    }

    /// Whether this is a single-device, single-node run (no collective at all).
    pub fn is_single(&self) -> bool {
        self.peer_count() == 1
    }

    /// Whether this node writes the run directory (node 0; the others only read the
    /// checkpoint they resume from).
    pub fn writes_run_dir(&self) -> bool {
        self.node_rank == 0
    }

    /// The orchestrator's host and port.
    pub fn coordinator_address(&self) -> Result<(String, u16), Invalid> {
        let Some(text) = &self.coordinator else {
            return Err(Invalid::new("coordinator", format!("{} nodes need the orchestrator's HOST:PORT (--coordinator)", self.nodes)));
        };
        let parsed = text.rsplit_once(':').and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)));
        match parsed {
            Some((host, port)) if valid_host(host) && port > 0 => Ok((host.to_string(), port)),
            _ => Err(Invalid::new("coordinator", format!("must be HOST:PORT (a port from 1 to 65535; an IPv6 address in brackets), got {text:?}"))),
        }
    }

    /// This node's data service port: `data_port`, or the coordinator's port + 1 + `node_rank`.
    pub fn data_service_port(&self) -> Result<u16, Invalid> {
        if self.data_port != 0 {
            return Ok(self.data_port);
        }
        let (_, port) = self.coordinator_address()?;
        u16::try_from(port as usize + 1 + self.node_rank)
            .map_err(|_| Invalid::new("data_port", format!("the coordinator's port {port} + 1 + node_rank {} is past 65535: set it", self.node_rank)))
    }

    /// Checks the keys; errors name the key within the section.
    pub fn validate(&self) -> Result<(), Invalid> {
        emulsion_config::at_least("nodes", self.nodes, 1)?;
        if self.node_rank >= self.nodes {
            return Err(Invalid::new("node_rank", format!("must be below nodes = {}, got {}", self.nodes, self.node_rank)));
        }
        if !(self.timeout_s.is_finite() && self.timeout_s > 0.0) {
            return Err(Invalid::new("timeout_s", format!("must be a positive number of seconds, got {}", self.timeout_s)));
        }
        if self.nodes > 1 {
            let (host, port) = self.coordinator_address()?;
            let data_port = self.data_service_port()?;
            if !valid_host(&self.node_address) {
                return Err(Invalid::new("node_address", format!("must be a host name or IP address, got {:?}", self.node_address)));
            }
            if is_loopback(&self.node_address) && !is_loopback(&host) {
                return Err(Invalid::new(
                    "node_address",
                    format!("is {}, which the other machines cannot reach (the coordinator is at {host}): set it to this machine's address", self.node_address),
                ));
            }
            if self.node_rank == 0 && self.start_coordinator && data_port == port {
                return Err(Invalid::new("data_port", format!("{data_port} is the coordinator's port, which node 0's orchestrator listens on")));
            }
        }
        Ok(())
    }

    /// This node's peers, in rank order.
    pub fn peers(&self) -> Vec<Peer> {
        let indices = self.device_indices();
        let (count, first) = (self.peer_count(), self.node_rank * indices.len());
        let timeout = Duration::from_secs_f64(self.timeout_s);
        let remote = (self.nodes > 1).then(|| self.other_nodes());
        indices.iter().enumerate().map(|(local, &device_index)| Peer { rank: first + local, count, device_index, timeout, remote: remote.clone() }).collect()
    }

    /// The nodes other than this one, for an error that cannot tell which of them is missing.
    fn other_nodes(&self) -> String {
        let others: Vec<String> = (0..self.nodes).filter(|n| *n != self.node_rank).map(|n| n.to_string()).collect();
        format!("node {}", others.join(", node "))
    }

    /// Burn's collective configuration of this node.
    fn collective(&self) -> Result<CollectiveConfig, Invalid> {
        let local = CollectiveConfig::default()
            .with_num_devices(self.device_indices().len())
            .with_local_all_reduce_strategy(AllReduceStrategy::Tree(2));
        if self.nodes == 1 {
            return Ok(local);
        }
        let (host, port) = self.coordinator_address()?;
        let data_port = self.data_service_port()?;
        let address = |key: &str, host: &str, port: u16| {
            format!("ws://{host}:{port}").parse().map_err(|e| Invalid::new(key, format!("{host}:{port} is not an address: {e:?}")))
        };
        Ok(local
            .with_num_nodes(self.nodes as u32)
            .with_global_address(address("coordinator", &host, port)?)
            .with_node_address(address("node_address", &self.node_address, data_port)?)
            .with_data_service_port(data_port)
            .with_global_all_reduce_strategy(AllReduceStrategy::Tree(2)))
    }
}

/// A host name or an IP address (IPv6 in brackets): no scheme, path or spaces.
fn valid_host(host: &str) -> bool {
    let bracketed = host.starts_with('[') && host.ends_with(']');
    !host.is_empty() && !host.contains(['/', ' ', '@', '?', '#']) && (bracketed || !host.contains(':'))
}

/// Whether `host` names this machine only.
fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.starts_with("127.") || host == "[::1]"
}

/// Why data-parallel training stopped.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer {rank}: Burn's collective failed at {what}: {reason}")]
    Collective { rank: usize, what: String, reason: String },
    #[error("peer {rank} lost the peers of {nodes} at {what} (Burn's collective: {reason}): a node stopped, the network between the nodes failed, or the nodes' configs differ; restart every node with --resume")]
    NodeLost { rank: usize, what: String, nodes: String, reason: String },
    #[error("peer {rank} waited {seconds:.0} s at {what} for {missing} (distributed.timeout_s): a stalled peer, or one slower than that; restart the run (every node, with several) with --resume (a larger distributed.timeout_s if the wait was legitimate)")]
    Timeout { rank: usize, what: String, seconds: f64, missing: String },
    #[error("peer {rank} stopped at {what} because peer {failed} failed: {reason}")]
    PeerFailed { rank: usize, what: String, failed: usize, reason: String },
    #[error("{claims} peers are numbered {rank}: every node needs its own --node-rank, 0 to nodes - 1, and the same number of devices")]
    Numbering { rank: usize, claims: u16 },
    #[error("peer {rank} has {theirs} where peer 0 has {ours} ({what}): the peers train different models (several nodes: every node must resume from the same checkpoint, with the same config)")]
    Mismatch { rank: usize, what: String, ours: String, theirs: String },
}

/// One peer of data-parallel training.
#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    /// Its number in the whole run (Burn's `PeerId`).
    pub rank: usize,
    /// Peers in the whole run.
    pub count: usize,
    /// Its device's index on the backend.
    pub device_index: u16,
    timeout: Duration,
    /// The other nodes, as an error names them (several nodes).
    remote: Option<String>,
}

/// How long a finished peer waits for Burn's collective to acknowledge that it leaves.
const LEAVE_WAIT: Duration = Duration::from_secs(10);

/// Where each peer of this node stands: collective calls entered, and the error of one that
/// failed. Lets a waiting peer name the one it waits for, and stop at once when one has failed.
static PEERS: Mutex<BTreeMap<usize, Standing>> = Mutex::new(BTreeMap::new());

/// One peer's entry in [`PEERS`].
#[derive(Debug, Clone, Default)]
struct Standing {
    /// Collective calls entered.
    calls: u64,
    /// Its error, once it has failed.
    failed: Option<String>,
    /// Doing the writer's work (a checkpoint, a sample grid, FID): the others' waits do not
    /// count against `distributed.timeout_s` meanwhile.
    busy: bool,
}

impl Peer {
    /// The peer of a single-device run.
    pub fn alone() -> Self {
        Self { rank: 0, count: 1, device_index: 0, timeout: Duration::MAX, remote: None }
    }

    /// Whether it writes the run directory (checkpoints, journal, samples, FID).
    pub fn writes(&self) -> bool {
        self.rank == 0
    }

    /// Its device on backend `B`.
    pub fn device<B: Backend>(&self) -> B::Device {
        if self.device_index == 0 { Default::default() } else { B::Device::from_id(DeviceId::new(0, self.device_index)) }
    }

    /// Its contiguous rows of a global batch of `n` (`n` divides evenly: see `Config::validate`).
    pub fn shard(&self, n: usize) -> Range<usize> {
        let size = n / self.count;
        self.rank * size..(self.rank + 1) * size
    }

    /// Joins the collective (every peer of every node must); then checks that every peer starts
    /// at `step` with the same weights.
    pub fn join<B: AutodiffBackend, M: Module<B>>(&self, config: &DistributedConfig, module: &M, step: u64) -> Result<(), PeerError> {
        if self.count == 1 {
            return Ok(());
        }
        self.register::<B::InnerBackend>(config)?;
        tracing::info!("peer {} of {} joined (device {})", self.rank, self.count, self.device_index);
        self.agree::<B, M>(module, step, "start")
    }

    fn register<B: Backend>(&self, config: &DistributedConfig) -> Result<(), PeerError> {
        let collective = config.collective().map_err(|e| self.failed("registration", e.to_string()))?;
        let device = self.device::<B>();
        let id = PeerId::from(self.rank as u32);
        self.wait("registration with the other peers", move || collective::register::<B>(id, device, collective))
    }

    /// Checks that every peer is at `step` with the same weights (at the start, and after the
    /// last step): the same step, and the same hash of every weight's bits, read on the host.
    pub fn agree<B: AutodiffBackend, M: Module<B>>(&self, module: &M, step: u64, when: &str) -> Result<(), PeerError> {
        if self.count == 1 {
            return Ok(());
        }
        let device = self.device::<B::InnerBackend>();
        // A first word of 1 from each peer: a rank that two peers claim (or none) sums to another.
        let words: Vec<u16> = std::iter::once(1).chain([step, weight_hash::<B, M>(module)].iter().flat_map(|v| (0..4).map(move |k| (v >> (16 * k)) as u16))).collect();
        let all = self.gather::<B::InnerBackend>(&words, &format!("the {when} check"), &device)?;
        if let Some((rank, claims)) = all.iter().map(|peer| peer[0]).enumerate().find(|(_, claims)| *claims != 1) {
            return Err(PeerError::Numbering { rank, claims });
        }
        let value = |peer: &[u16], at: usize| (0..4).fold(0u64, |v, k| v | (peer[1 + at + k] as u64) << (16 * k));
        for (rank, theirs) in all.iter().enumerate() {
            let (step_0, step_r) = (value(&all[0], 0), value(theirs, 0));
            if step_r != step_0 {
                return Err(PeerError::Mismatch { rank, what: format!("the {when} step"), ours: format!("step {step_0}"), theirs: format!("step {step_r}") });
            }
            let (hash_0, hash_r) = (value(&all[0], 4), value(theirs, 4));
            if hash_r != hash_0 {
                return Err(PeerError::Mismatch { rank, what: format!("the hash of every weight's bits, at the {when}"), ours: format!("{hash_0:016x}"), theirs: format!("{hash_r:016x}") });
            }
        }
        Ok(())
    }

    /// Leaves the collective (after the last step). Between nodes Burn's orchestrator must
    /// acknowledge it, and may be gone already (node 0 ends it): the run is complete either way,
    /// so this waits a few seconds at most.
    pub fn leave<B: Backend>(&self) {
        if self.count == 1 {
            return;
        }
        let id = PeerId::from(self.rank as u32);
        let (sender, receiver) = std::sync::mpsc::channel();
        let finishing = std::thread::Builder::new().name(format!("collective-{}", self.rank)).spawn(move || {
            let _ = sender.send(collective::finish_collective::<B>(id));
        });
        if finishing.is_ok() && receiver.recv_timeout(LEAVE_WAIT).is_err() {
            tracing::warn!("peer {}: Burn's collective did not acknowledge its finish within {} s; the run is complete", self.rank, LEAVE_WAIT.as_secs());
        }
    }

    /// Tells the waiting peers that this one failed, so they stop at once.
    pub fn fail(&self, reason: &str) {
        if self.count > 1 {
            PEERS.lock().unwrap_or_else(PoisonError::into_inner).entry(self.rank).or_default().failed = Some(reason.to_string());
        }
    }

    /// Runs `work` (the writer's checkpoint, sample grid or FID) while the other peers wait for
    /// it without their timeout running.
    pub fn busy<T>(&self, work: impl FnOnce() -> T) -> T {
        if self.count == 1 {
            return work();
        }
        let mark = |busy: bool| PEERS.lock().unwrap_or_else(PoisonError::into_inner).entry(self.rank).or_default().busy = busy;
        mark(true);
        let done = work();
        mark(false);
        done
    }

    /// Sums `grads` (every gradient of `module`) and `extra` over the peers, in one all-reduce
    /// of their concatenation.
    pub fn sum_gradients<B: AutodiffBackend, M: Module<B>>(
        &self,
        module: &M,
        grads: GradientsParams,
        extra: Tensor<B::InnerBackend, 1>,
        step: u64,
    ) -> Result<(GradientsParams, Tensor<B::InnerBackend, 1>), PeerError> {
        if self.count == 1 {
            return Ok((grads, extra));
        }
        struct Flatten<'a, B: AutodiffBackend> {
            grads: &'a GradientsParams,
            parts: Vec<Tensor<B::InnerBackend, 1>>,
        }
        impl<B: AutodiffBackend> ModuleVisitor<B> for Flatten<'_, B> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
                    self.parts.push(g.flatten(0, D - 1));
                }
            }
        }
        struct Unflatten<'a, B: AutodiffBackend> {
            summed: Tensor<B::InnerBackend, 1>,
            offset: usize,
            grads: &'a mut GradientsParams,
        }
        impl<B: AutodiffBackend> ModuleVisitor<B> for Unflatten<'_, B> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
                    let shape = g.shape();
                    let len = shape.num_elements();
                    let part: Tensor<B::InnerBackend, D> = self.summed.clone().narrow(0, self.offset, len).reshape(shape);
                    self.offset += len;
                    self.grads.register(param.id, part);
                }
            }
        }
        let mut flatten = Flatten::<B> { grads: &grads, parts: Vec::new() };
        module.visit(&mut flatten);
        let extra_len = extra.dims()[0];
        flatten.parts.push(extra);
        let summed = self.sum(Tensor::cat(flatten.parts, 0), &format!("the gradients of step {step}"))?;
        let total = summed.dims()[0];
        let mut grads = grads;
        let mut unflatten = Unflatten::<B> { summed: summed.clone(), offset: 0, grads: &mut grads };
        module.visit(&mut unflatten);
        Ok((grads, summed.narrow(0, total - extra_len, extra_len)))
    }

    /// `tensor` summed over every peer.
    fn sum<B: Backend>(&self, tensor: Tensor<B, 1>, what: &str) -> Result<Tensor<B, 1>, PeerError> {
        let id = PeerId::from(self.rank as u32);
        let primitive = tensor.into_primitive().tensor();
        let summed = self.wait(what, move || collective::all_reduce::<B>(id, primitive, ReduceOperation::Sum))?;
        Ok(Tensor::from_primitive(TensorPrimitive::Float(summed)))
    }

    /// `tensor` averaged over every peer: the same bits on every peer.
    pub fn mean<B: Backend>(&self, tensor: Tensor<B, 1>, step: u64) -> Result<Tensor<B, 1>, PeerError> {
        Ok(self.sum(tensor, &format!("the gradient norm of step {step}"))? / self.count as f64)
    }

    /// Every peer's `words`, in rank order (an all-reduce of rows that are zero but for the
    /// peer's own: Burn's collective has no gather; 16-bit words are exact in f32).
    fn gather<B: Backend>(&self, words: &[u16], what: &str, device: &B::Device) -> Result<Vec<Vec<u16>>, PeerError> {
        let k = words.len();
        let mut row = vec![0f32; self.count * k];
        for (slot, word) in row[self.rank * k..(self.rank + 1) * k].iter_mut().zip(words) {
            *slot = *word as f32;
        }
        let summed = self.sum(Tensor::<B, 1>::from_floats(row.as_slice(), device), what)?;
        let values = summed.into_data().to_vec::<f32>().map_err(|e| self.failed(what, format!("reading the result back: {e:?}")))?;
        Ok(values.chunks(k).map(|peer| peer.iter().map(|v| *v as u16).collect()).collect())
    }

    /// Runs the blocking collective call `call` on a thread of its own and waits for it at most
    /// `distributed.timeout_s`, stopping at once if another peer has failed.
    fn wait<T: Send + 'static>(&self, what: &str, call: impl FnOnce() -> Result<T, collective::CollectiveError> + Send + 'static) -> Result<T, PeerError> {
        let entered = {
            let mut peers = PEERS.lock().unwrap_or_else(PoisonError::into_inner);
            let me = peers.entry(self.rank).or_default();
            me.calls += 1;
            me.calls
        };
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(format!("collective-{}", self.rank))
            .spawn(move || {
                let _ = sender.send(call());
            })
            .map_err(|e| self.failed(what, e.to_string()))?;
        let mut since = Instant::now();
        loop {
            match receiver.recv_timeout(Duration::from_millis(50)) {
                Ok(result) => {
                    return result.map_err(|e| match (e, &self.remote) {
                        // Between nodes: a node lost (killed, or its network), or a mismatch; losing
                        // a node can also take this node's collective server down with it.
                        (reason @ (collective::CollectiveError::Global(_) | collective::CollectiveError::LocalServerMissing), Some(nodes)) => {
                            PeerError::NodeLost { rank: self.rank, what: what.into(), nodes: nodes.clone(), reason: format!("{reason:?}") }
                        }
                        (e, _) => self.failed(what, format!("{e:?} (burn::collective::CollectiveError)")),
                    })
                }
                Err(RecvTimeoutError::Disconnected) => return Err(self.failed(what, "the collective call ended without a result".into())),
                Err(RecvTimeoutError::Timeout) => {}
            }
            let peers = PEERS.lock().unwrap_or_else(PoisonError::into_inner).clone();
            if let Some((failed, reason)) = peers.iter().find_map(|(rank, p)| p.failed.as_ref().filter(|_| *rank != self.rank).map(|r| (*rank, r.clone()))) {
                return Err(PeerError::PeerFailed { rank: self.rank, what: what.into(), failed, reason });
            }
            if peers.values().any(|p| p.busy) {
                since = Instant::now();
            }
            if since.elapsed() >= self.timeout {
                let behind: Vec<String> = peers.iter().filter(|(_, p)| p.calls < entered).map(|(rank, _)| format!("peer {rank}")).collect();
                let missing = match (behind.is_empty(), &self.remote) {
                    (false, _) => behind.join(", "),
                    (true, Some(nodes)) => format!("the peers of {nodes} (every peer of this node is there)"),
                    (true, None) => "Burn's collective".to_string(),
                };
                return Err(PeerError::Timeout { rank: self.rank, what: what.into(), seconds: self.timeout.as_secs_f64(), missing });
            }
        }
    }

    fn failed(&self, what: &str, reason: String) -> PeerError {
        PeerError::Collective { rank: self.rank, what: what.into(), reason }
    }
}

/// A hash of the bits of every float parameter of `module`, read back in visiting order: equal
/// on peers with equal weights, whatever order a device sums in.
fn weight_hash<B: AutodiffBackend, M: Module<B>>(module: &M) -> u64 {
    use std::hash::Hasher;
    struct Hash<B: AutodiffBackend>(std::hash::DefaultHasher, std::marker::PhantomData<B>);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Hash<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0.write(param.val().inner().into_data().as_bytes());
        }
    }
    let mut hash = Hash::<B>(std::hash::DefaultHasher::new(), std::marker::PhantomData);
    module.visit(&mut hash);
    hash.0.finish()
}

/// Lists every peer before any starts, so that one that never registers is named by the
/// others.
pub fn enroll(peers: &[Peer]) {
    let mut standing = PEERS.lock().unwrap_or_else(PoisonError::into_inner);
    for peer in peers {
        standing.insert(peer.rank, Standing::default());
    }
}

/// Forgets the peers of a finished (or failed) group, and, with `server`, resets Burn's
/// collective server of backend `B`, so a later group in this process starts afresh.
pub fn reset<B: Backend>(server: bool) {
    PEERS.lock().unwrap_or_else(PoisonError::into_inner).clear();
    if server {
        collective::reset_collective::<B>();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> DistributedConfig {
        toml::from_str(toml).unwrap()
    }

    #[test]
    fn peers_of_several_nodes_are_numbered_node_by_node() {
        let node_1 = config("devices = [3, 1]\nnodes = 3\nnode_rank = 1\ncoordinator = \"h:9\"");
        let peers = node_1.peers();
        assert_eq!(peers.iter().map(|p| (p.rank, p.count, p.device_index)).collect::<Vec<_>>(), vec![(2, 6, 3), (3, 6, 1)]);
        assert_eq!(peers[0].shard(12), 4..6);
        assert!(!peers[0].writes() && !node_1.writes_run_dir() && !node_1.is_single());
        assert_eq!(peers[0].remote.as_deref(), Some("node 0, node 2"));
    }

    #[test]
    fn peers_are_numbered_in_device_order_and_shards_tile_the_batch() {
        let three = config("devices = [2, 0, 5]");
        three.validate().unwrap();
        let peers = three.peers();
        assert_eq!(peers.iter().map(|p| (p.rank, p.count, p.device_index)).collect::<Vec<_>>(), vec![(0, 3, 2), (1, 3, 0), (2, 3, 5)]);
        let shards: Vec<Range<usize>> = peers.iter().map(|p| p.shard(24)).collect();
        assert_eq!(shards, vec![0..8, 8..16, 16..24]);
        assert!(peers[0].writes() && !peers[1].writes());
        assert!(DistributedConfig::default().is_single());
        assert_eq!(Peer::alone().shard(7), 0..7);
    }

    type Cpu = burn::backend::Flex;

    /// Two peers on the CPU, each on a thread running `work` after joining; the results in
    /// rank order. One group at a time: Burn's collective server is one per backend.
    fn two_peers<T: Send>(timeout_s: f64, work: impl Fn(&Peer) -> T + Sync) -> Vec<T> {
        static ONE_GROUP: Mutex<()> = Mutex::new(());
        let _group = ONE_GROUP.lock().unwrap_or_else(PoisonError::into_inner);
        let config = DistributedConfig { devices: vec![0, 1], timeout_s: 60.0, ..Default::default() };
        let peers = config.peers();
        enroll(&peers);
        let results = std::thread::scope(|scope| {
            let handles: Vec<_> = peers
                .into_iter()
                .map(|peer| {
                    let (config, work) = (&config, &work);
                    scope.spawn(move || {
                        peer.register::<Cpu>(config).unwrap();
                        work(&Peer { timeout: Duration::from_secs_f64(timeout_s), ..peer })
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        reset::<Cpu>(true);
        results
    }

    #[test]
    fn a_sum_over_peers_is_every_peers_tensor_added() {
        let sums = two_peers(60.0, |peer| {
            let device = Default::default();
            let own = Tensor::<Cpu, 1>::from_floats([1.0 + peer.rank as f32, 10.0], &device);
            let summed = peer.sum(own, "a test sum").unwrap().into_data().to_vec::<f32>().unwrap();
            let gathered = peer.gather::<Cpu>(&[peer.rank as u16 * 3, u16::MAX - peer.rank as u16], "a test gather", &device).unwrap();
            (summed, gathered)
        });
        for (summed, gathered) in sums {
            assert_eq!(summed, vec![3.0, 20.0]);
            assert_eq!(gathered, vec![vec![0, u16::MAX], vec![3, u16::MAX - 1]]);
        }
    }

    #[test]
    fn a_peer_that_stalls_is_named_once_the_timeout_passes() {
        let results = two_peers(1.0, |peer| {
            if peer.rank == 1 {
                // Stalls: never joins the all-reduce (until peer 0 has given up).
                std::thread::sleep(Duration::from_secs(3));
                return None;
            }
            let started = Instant::now();
            let e = peer.sum(Tensor::<Cpu, 1>::from_floats([1.0], &Default::default()), "the gradients of step 7").unwrap_err();
            Some((e.to_string(), started.elapsed()))
        });
        let (message, waited) = results[0].clone().unwrap();
        assert!(message.contains("peer 0 waited 1 s at the gradients of step 7 for peer 1") && message.contains("distributed.timeout_s"), "{message}");
        assert!(waited >= Duration::from_secs(1) && waited < Duration::from_secs(3), "{waited:?}");
    }

    #[test]
    fn the_writers_work_does_not_count_against_the_timeout() {
        let results = two_peers(1.0, |peer| {
            let device = Default::default();
            if peer.rank == 0 {
                // A checkpoint (or FID) three times as long as the timeout, then the next step.
                peer.busy(|| std::thread::sleep(Duration::from_secs(3)));
            }
            peer.sum(Tensor::<Cpu, 1>::from_floats([1.0], &device), "the gradients of step 2").map(|t| t.into_scalar())
        });
        for result in results {
            assert_eq!(result.unwrap(), 2.0);
        }
    }

    #[test]
    fn a_peer_that_fails_stops_the_others_at_once_with_its_error() {
        let results = two_peers(60.0, |peer| {
            if peer.rank == 1 {
                peer.fail("step 3: the loss is NaN");
                return None;
            }
            let started = Instant::now();
            let e = peer.sum(Tensor::<Cpu, 1>::from_floats([1.0], &Default::default()), "the gradients of step 3").unwrap_err();
            Some((e.to_string(), started.elapsed()))
        });
        let (message, waited) = results[0].clone().unwrap();
        assert_eq!(message, "peer 0 stopped at the gradients of step 3 because peer 1 failed: step 3: the loss is NaN");
        assert!(waited < Duration::from_secs(10), "{waited:?}");
    }

    #[test]
    fn bad_keys_are_named() {
        for (toml, key, says) in [("timeout_s = 0", "timeout_s", "positive"), ("timeout_s = nan", "timeout_s", "positive"), ("timeout_s = -1", "timeout_s", "positive")] {
            let e = config(toml).validate().unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(says), "{toml}: {e}");
        }
        for (toml, key, says) in [
            ("nodes = 0", "nodes", "at least 1"),
            ("nodes = 2\nnode_rank = 2\ncoordinator = \"h:1\"", "node_rank", "below nodes = 2"),
            ("nodes = 2", "coordinator", "HOST:PORT"),
            ("nodes = 2\ncoordinator = \"host\"", "coordinator", "HOST:PORT"),
            ("nodes = 2\ncoordinator = \"host:0\"", "coordinator", "HOST:PORT"),
            ("nodes = 2\ncoordinator = \"ws://host:80/x\"", "coordinator", "HOST:PORT"),
            ("nodes = 2\ncoordinator = \":80\"", "coordinator", "HOST:PORT"),
            ("nodes = 2\nnode_rank = 1\ncoordinator = \"host:65535\"", "data_port", "past 65535"),
            ("nodes = 2\ncoordinator = \"host:80\"\nnode_address = \"a b\"", "node_address", "host name"),
            ("nodes = 2\ncoordinator = \"10.0.0.1:80\"", "node_address", "is 127.0.0.1, which the other machines cannot reach"),
            ("nodes = 2\ncoordinator = \"h:80\"\nnode_address = \"h\"\ndata_port = 80", "data_port", "coordinator's port"),
            ("nodes = 2\ncoordinator = \"::1:80\"", "coordinator", "in brackets"),
        ] {
            let e = config(toml).validate().unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(says), "{toml}: {e}");
        }
        // One node needs no coordinator; several take their data ports after its port.
        config("nodes = 1\ncoordinator = \"junk\"").validate().unwrap();
        config("nodes = 2\ncoordinator = \"[::1]:80\"").validate().unwrap();
        let node_1 = config("nodes = 2\nnode_rank = 1\ncoordinator = \"10.0.0.1:29500\"\nnode_address = \"10.0.0.2\"");
        node_1.validate().unwrap();
        assert_eq!((node_1.coordinator_address().unwrap(), node_1.data_service_port().unwrap()), (("10.0.0.1".to_string(), 29500), 29502));
        assert_eq!(config("nodes = 2\ncoordinator = \"h:9\"\ndata_port = 7").data_service_port().unwrap(), 7);
    }
}
