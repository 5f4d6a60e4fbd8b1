// Package nbd is Cairn's NBD protocol server: fixed newstyle negotiation,
// structured replies, meta contexts and block status, pipelined requests
// answered out of order. It serves any Backend; it knows nothing of
// snapshots, chains or the store.
package nbd
