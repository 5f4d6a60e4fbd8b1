// Package cow is Cairn's volume engine: one disk's live image, the change
// tracking of its current epoch, and its crash-consistent snapshots, kept
// in the store as an incremental chain. Every frontend reads and writes a
// disk only through a Volume (a block.Device), so change tracking sees
// every write; a View serves one snapshot read-only. cow knows no
// frontend: it imports block (the device contract and the errors) and
// store (chunks, chain entries, records).
//
// # Words
//
// An epoch is the time between two snapshots of a disk; epoch e is opened
// by the seal of the snapshot with sequence e. The dirty set is the blocks
// written in the current epoch. A snapshot's pending set is the blocks whose
// version it holds that are not yet in the store: its sealed dirty set,
// less what its copy-out has stored, plus blocks a failed or deleted
// predecessor passed to it.
//
// # The life of a snapshot
//
//   - Writes go to the live image and mark their blocks in the epoch's dirty
//     set first (track.go: a tracker file, durable before the write).
//   - CreateSnapshot (seal.go) seals the epoch: under a hold of
//     microseconds that never waits for writes in flight, the dirty set
//     becomes the new snapshot's pending set and a new epoch opens. Once
//     the old epoch's writes in flight have drained, the live image and
//     the snapshot's record are made durable; the snapshot is `copying`.
//   - Copy-out (copyout.go): a worker reads each pending block's version
//     (the live image, with the redirected pages of earlier epochs laid
//     over it), stores it as a chunk and a chain entry, and clears it from
//     pending. With nothing pending the snapshot is `ready`.
//   - Redirect-on-write (redirect.go, rindex.go, side.go): while a block is
//     pending for a copying snapshot, writes to it do not overwrite the live
//     image; they go to a sparse side file of their epoch, so the image keeps
//     what the snapshots read and the guest never waits for a copy. Once
//     nothing copies, the redirected pages are merged into the image and
//     the side files deleted (retire.go).
//   - If the store cannot keep a snapshot it turns `failed` (fail.go); its
//     pending blocks pass to its successor, or back to the live epoch, so
//     every other snapshot stays complete and guest writes go on.
//   - Deleting a snapshot (delete.go) records it `deleting`, durably, then
//     merges it into its successor in the store: metadata only. Rollback
//     (rollback.go) writes the snapshot's version of every block changed
//     since back through the write path. Changes (changes.go) lists the
//     blocks changed between two points for backup tools.
//   - Open (recover.go) recovers after a crash or power cut: it drops a
//     seal whose record never became durable, folds trackers of unsealed
//     epochs back in, rebuilds the redirect index from the side files,
//     finishes deletes and resumes copy-outs.
//
// # Invariants (DESIGN.md)
//
//  1. Crash-consistent: a snapshot holds every write acknowledged before
//     CreateSnapshot was called and none issued after it returned.
//  2. Ordered durability: the content a snapshot reads stays where it reads
//     it (writes over it are redirected) until it is durable in the store;
//     the snapshot's record is durable before CreateSnapshot returns; an
//     acknowledged Flush makes the live image and the side files durable.
//  3. Deleting a snapshot frees exactly the chunks nothing else references.
//  4. A block is in the epoch's durable dirty set (its tracker bit, or the
//     side file holding its redirected pages) before a write to it is
//     acknowledged, so after a crash the next snapshot finds every changed
//     block from these small files, never by reading the disk.
//  5. When the store cannot keep a snapshot, the snapshot fails with a
//     reason and guest writes go on; no `ready` snapshot is ever wrong.
//
// # Locks
//
// A Volume's locks, in the order they are taken: a goroutine holding one
// takes only locks further down the list. None of them is held by a
// guest write or a seal's hold while the holder does slow I/O (a store
// lookup, a sync), except as noted.
//
//  1. sealMu serialises changes of the chain's shape: create, delete,
//     rollback, grow. It is held across their I/O (a delete's merge, a
//     seal's commit); guest I/O never takes it.
//  2. passMu serialises passing a failed or deleted snapshot's pending
//     blocks to its successor (fail.go), which looks blocks up in the
//     store and syncs the tracker, and undoing a seal; only those paths
//     take it, and a pass never holds it while it writes records.
//  3. recMu serialises writing snapshot records (persistRecord), so an
//     older copy of a record never lands over a newer one. Held across
//     the record's write and the store's sync; taken by record writers
//     only, never under a lock below.
//  4. gate (RWMutex) is held shared by every write while it is in flight
//     and exclusively to grow the disk, to undo a seal, and for the last
//     round of merging redirected writes (retire).
//  5. mu guards the chain: the snapshots, nextSeq, epoch, each snapshot's
//     record, worker state and incoming passes, the copying list and the
//     change notification. A seal's hold is a short section under mu; mu
//     is never held across I/O.
//  6. A stripe lock (stripes[block % stripeCount]) guards one block's
//     pending-bit transitions against the reads of its version, and the
//     read-modify-write of its redirected pages; the I/O under it is one
//     block's read or one page run's write to a side file.
//  7. redirects.mu guards the redirect index; it is held shared while a
//     page is read from a side file, so retire cannot delete the file
//     under the reader.
//  8. Leaves: sideFiles.mu, a tracker's life and wmu, each groupSync's mu.
package cow
