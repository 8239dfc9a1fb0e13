//! [`Membership`]'s invariant: after any sequence of joins, leaves and disconnects on
//! several workers, and once the mesh has delivered its interest messages, every view
//! (members, each client's rooms, the directory, every worker's interest replica)
//! agrees with the others.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::outbound::Proto;

const WORKERS: usize = 3;
const CLIENTS: usize = 4;
const ROOMS: [&str; 3] = ["a", "b", "c"];
const WIDE: RoomLimits = RoomLimits {
    per_client: usize::MAX,
    server: usize::MAX,
};

#[derive(Debug, Clone)]
enum Op {
    Join(usize, usize, usize),
    Leave(usize, usize, usize),
    Drop(usize, usize),
    Deliver,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..WORKERS, 0..CLIENTS, 0..ROOMS.len()).prop_map(|(w, c, r)| Op::Join(w, c, r)),
        (0..WORKERS, 0..CLIENTS, 0..ROOMS.len()).prop_map(|(w, c, r)| Op::Leave(w, c, r)),
        (0..WORKERS, 0..CLIENTS).prop_map(|(w, c)| Op::Drop(w, c)),
        Just(Op::Deliver),
    ]
}

struct Cluster {
    mesh: Arc<Mesh>,
    dirs: Arc<Directories>,
    workers: Vec<Membership>,
    conns: Vec<Vec<Rc<Conn>>>,
}

impl Cluster {
    fn new() -> Self {
        let mesh = Mesh::new(WORKERS);
        let dirs = Arc::new(Directories::new(WORKERS));
        let workers = (0..WORKERS)
            .map(|w| {
                let stats = Arc::new(WorkerStats::default());
                Membership::new(w, Arc::clone(&mesh), Arc::clone(&dirs), stats, None)
            })
            .collect();
        let conns = (0..WORKERS)
            .map(|w| (0..CLIENTS).map(|c| conn(w, c as u64)).collect())
            .collect();
        Self {
            mesh,
            dirs,
            workers,
            conns,
        }
    }

    fn run(&mut self, op: &Op) {
        match *op {
            Op::Join(w, c, r) => {
                let conn = Rc::clone(&self.conns[w][c]);
                self.workers[w].join(&conn, ROOMS[r], WIDE).unwrap();
            }
            Op::Leave(w, c, r) => {
                let was = self.workers[w].is_member(&self.conns[w][c], ROOMS[r]);
                assert_eq!(self.workers[w].leave(&self.conns[w][c], ROOMS[r]), was);
            }
            Op::Drop(w, c) => {
                self.workers[w].drop_conn(&self.conns[w][c]);
            }
            Op::Deliver => self.deliver(),
        }
    }

    /// Applies every queued interest message, as each worker's inbox loop would.
    fn deliver(&mut self) {
        for (w, membership) in self.workers.iter_mut().enumerate() {
            let mut batch = Vec::new();
            self.mesh.inboxes[w].drain_into(&mut batch);
            for msg in batch {
                if let MeshMsg::Interest {
                    room,
                    worker,
                    joined,
                    barrier,
                } = msg
                {
                    membership.apply_interest(&room, worker, joined);
                    if let Some(b) = barrier {
                        b.arrive();
                    }
                }
            }
        }
    }

    fn check(&mut self) {
        self.deliver();
        let mut holders: BTreeMap<&str, BTreeSet<usize>> = BTreeMap::new();
        for (w, membership) in self.workers.iter().enumerate() {
            let dir = self.dirs.lock(w).unwrap();
            for room in ROOMS {
                let members: BTreeSet<u64> = membership.members(room).map(|c| c.id.seq).collect();
                let by_client: BTreeSet<u64> = self.conns[w]
                    .iter()
                    .filter(|c| membership.rooms_of(c).iter().any(|r| &**r == room))
                    .map(|c| c.id.seq)
                    .collect();
                assert_eq!(
                    members, by_client,
                    "worker {w} room {room}: members vs rooms_of"
                );
                let in_dir: BTreeSet<u64> = dir
                    .rooms
                    .get(room)
                    .into_iter()
                    .flatten()
                    .map(|id| id.seq)
                    .collect();
                assert_eq!(
                    members, in_dir,
                    "worker {w} room {room}: members vs directory"
                );
                for c in &self.conns[w] {
                    assert_eq!(membership.is_member(c, room), members.contains(&c.id.seq));
                }
                if !members.is_empty() {
                    holders.entry(room).or_default().insert(w);
                }
            }
            assert!(
                dir.rooms.values().all(|m| !m.is_empty()),
                "no empty room left behind"
            );
        }
        for (w, membership) in self.workers.iter().enumerate() {
            for room in ROOMS {
                let expected: u64 = holders
                    .get(room)
                    .into_iter()
                    .flatten()
                    .filter(|h| **h != w)
                    .map(|h| 1u64 << h)
                    .sum();
                assert_eq!(
                    membership.other_workers(room),
                    expected,
                    "worker {w}'s interest in {room}"
                );
            }
        }
    }
}

fn conn(worker: usize, seq: u64) -> Rc<Conn> {
    Rc::new(Conn::new(
        ClientId {
            node: 0,
            worker: worker as u16,
            seq,
        },
        Proto::Ws,
        "127.0.0.1:1".parse().unwrap(),
        -1,
    ))
}

proptest! {
    #[test]
    fn every_view_agrees_after_any_joins_leaves_and_disconnects(ops in proptest::collection::vec(op(), 0..60)) {
        let mut cluster = Cluster::new();
        for op in &ops {
            cluster.run(op);
        }
        cluster.check();
    }
}

#[test]
fn a_join_is_confirmed_only_after_every_other_worker_knows() {
    let mut cluster = Cluster::new();
    let conn = Rc::clone(&cluster.conns[0][0]);
    let barrier = cluster.workers[0].join(&conn, "a", WIDE).unwrap();
    let barrier = barrier.expect("the worker's first member tells the others");
    assert!(!barrier.is_open());
    cluster.deliver();
    assert!(barrier.is_open());
    let second = Rc::clone(&cluster.conns[0][1]);
    assert!(
        cluster.workers[0]
            .join(&second, "a", WIDE)
            .unwrap()
            .is_none()
    );
    assert!(
        cluster.workers[0].join(&conn, "a", WIDE).unwrap().is_none(),
        "twice"
    );
}

#[test]
fn limits_refuse_joins() {
    let mut cluster = Cluster::new();
    let conn = Rc::clone(&cluster.conns[0][0]);
    let one = RoomLimits {
        per_client: 1,
        server: 2,
    };
    cluster.workers[0].join(&conn, "a", one).unwrap();
    assert_eq!(
        cluster.workers[0].join(&conn, "b", one).err(),
        Some(JoinError::TooManyRooms)
    );
    let other = Rc::clone(&cluster.conns[0][1]);
    cluster.workers[0].join(&other, "b", one).unwrap();
    let third = Rc::clone(&cluster.conns[0][2]);
    assert_eq!(
        cluster.workers[0].join(&third, "c", one).err(),
        Some(JoinError::ServerRoomsFull)
    );
    assert!(
        cluster.workers[0].join(&third, "a", one).is_ok(),
        "an existing room"
    );
}

#[test]
fn the_directory_names_each_client_by_node_worker_and_seq() {
    let dirs = Directories::new(2);
    dirs.lock(0).unwrap().clients.insert(5);
    dirs.lock(1).unwrap().clients.insert(3);
    let id = |worker, seq| ClientId {
        node: 7,
        worker,
        seq,
    };
    assert_eq!(dirs.clients(7), vec![id(0, 5), id(1, 3)]);
    dirs.lock(1).unwrap().clients.remove(&3);
    assert_eq!(dirs.clients(7), vec![id(0, 5)]);
}
