package api

// Image is a whole-machine image (GET /v1/images/{name}): the content of
// every disk of a machine (or of one disk) at one instant, kept as chunk
// references, with the machine's configuration, independent of its
// sources. New machines are provisioned from it as instant clones.
type Image struct {
	Name        string      `json:"name"`
	Description string      `json:"description,omitempty"`
	Created     Time        `json:"created"`
	State       string      `json:"state"`            // ImageCreating, ImageAvailable, ImageNormal
	Source      string      `json:"source,omitempty"` // what it was made from: MACHINE@SNAPSHOT or DISK@SNAPSHOT
	Disks       []ImageDisk `json:"disks"`
	Config      *Config     `json:"config,omitempty"`
	// UniqueBytes: what deleting it frees (chunks only it references).
	UniqueBytes uint64 `json:"unique_bytes"`
	Clones      int    `json:"clones"` // disks reading through it
}

// ImageDisk is one disk of an image, in the machine's order.
type ImageDisk struct {
	Name      string `json:"name"`
	Size      int64  `json:"size"`
	BlockSize int    `json:"block_size"`
	Boot      bool   `json:"boot"`
}

// Image states (Huawei IMS's): usable on this host once available;
// normal once replicated to a vault (usable anywhere).
const (
	ImageCreating  = "creating"
	ImageAvailable = "available"
	ImageNormal    = "normal"
)

// CreateImageRequest is the body of POST /v1/images. Give one source: a
// machine (a machine snapshot is taken for it, with Consistency), a
// machine and its MachineSnapshot, or a disk and its Snapshot (an image
// of one disk, a system-disk image).
type CreateImageRequest struct {
	Name            string `json:"name"`
	Description     string `json:"description,omitempty"`
	Machine         string `json:"machine,omitempty"`
	MachineSnapshot string `json:"machine_snapshot,omitempty"`
	Consistency     string `json:"consistency,omitempty"`
	Disk            string `json:"disk,omitempty"`
	Snapshot        string `json:"snapshot,omitempty"`
}

// TaskImageCreate is the kind of an image's creation.
const TaskImageCreate = "image-create"
