// Package inspect checks a disk image before it travels (cairn check,
// docs/export.md): the image file's own metadata (qemu-img check, done by
// the caller), then, strictly read-only, its partition table, each
// filesystem (a read-only fsck, a mount that replays no journal) and a
// migration readiness report read from the mounted filesystems: EFI or
// BIOS boot, the root and fstab entries by UUID or by device name,
// virtio drivers in the initramfs, cloud-init. Every finding says what
// to do about it.
package inspect

import "slices"

// Finding statuses, from harmless to blocking.
const (
	StatusOK      = "ok"
	StatusInfo    = "info"
	StatusWarning = "warning"
	StatusError   = "error"
)

// Finding is one thing the check found.
type Finding struct {
	Check   string `json:"check"`           // what was looked at: image, partition-table, boot, filesystem, fstab, grub, virtio, cloud-init
	Where   string `json:"where,omitempty"` // the partition or file it is about
	Status  string `json:"status"`          // StatusOK, StatusInfo, StatusWarning, StatusError
	Message string `json:"message"`
	Fix     string `json:"fix,omitempty"` // what to do (warnings and errors)
}

// Partition is one partition (or the whole image, number 0) as checked.
type Partition struct {
	Number  int    `json:"number"`
	Offset  int64  `json:"offset"`
	Size    int64  `json:"size"`
	Type    string `json:"type,omitempty"`
	FSType  string `json:"fstype,omitempty"`
	Fsck    string `json:"fsck,omitempty"` // clean, errors, skipped, not-supported
	Mounted bool   `json:"mounted"`        // it was mounted (read-only) and read
	Role    string `json:"role,omitempty"` // root, boot, efi
}

// Report is everything cairn check found.
type Report struct {
	Target      string      `json:"target"`
	Format      string      `json:"format,omitempty"`
	VirtualSize int64       `json:"virtual_size,omitempty"`
	Scheme      string      `json:"partition_table"` // none, mbr, gpt
	Boot        string      `json:"boot"`            // bios, uefi, unknown
	Partitions  []Partition `json:"partitions"`
	Findings    []Finding   `json:"findings"`
	Status      string      `json:"status"` // the worst finding's
}

// add records a finding.
func (r *Report) add(f Finding) { r.Findings = append(r.Findings, f) }

// Add records a finding made by the caller (the image file's check).
func (r *Report) Add(f Finding) { r.add(f) }

var severity = []string{StatusOK, StatusInfo, StatusWarning, StatusError}

// Finish sets Status to the worst finding's.
func (r *Report) Finish() {
	r.Status = StatusOK
	for _, f := range r.Findings {
		if slices.Index(severity, f.Status) > slices.Index(severity, r.Status) {
			r.Status = f.Status
		}
	}
	if r.Findings == nil {
		r.Findings = []Finding{}
	}
	if r.Partitions == nil {
		r.Partitions = []Partition{}
	}
}
