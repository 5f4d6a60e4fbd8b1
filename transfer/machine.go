package transfer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/cairn-storage/cairn/daemon/api"
)

// ExportImage writes image to the directory dir (made here; it must not
// exist): one file per disk in format out, the configuration document,
// and the manifest, written last, with each file's SHA-256. A failure
// removes the directory.
func ExportImage(ctx context.Context, c *api.Client, image, dir string, out OutputOptions, show Progress) (Manifest, error) {
	if err := out.check(); err != nil {
		return Manifest{}, err
	}
	if out.Backing != "" {
		return Manifest{}, errors.New("an image export is not incremental")
	}
	if err := checkNew(dir); err != nil {
		return Manifest{}, err
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		return Manifest{}, err
	}
	tr, err := c.ExportImage(ctx, image)
	if err != nil {
		os.Remove(dir)
		return Manifest{}, err
	}
	m := Manifest{Kind: ManifestKind, Version: ManifestVersion, Image: image, Source: tr.Source, Created: api.At(time.Now())}
	var total uint64
	for _, td := range tr.Disks {
		total += uint64(td.Size)
	}
	err = run(ctx, c, tr, show, func(ctx context.Context, progress Progress) error {
		var base uint64
		for _, td := range tr.Disks {
			file := filepath.Join(dir, td.Name+"."+out.Format.Extension)
			if err := convertOut(ctx, tr, td, file, out, progress, base, total); err != nil {
				return err
			}
			base += uint64(td.Size)
			sum, err := fileSHA256(file)
			if err != nil {
				return err
			}
			m.Disks = append(m.Disks, ManifestDisk{Name: td.Name, File: filepath.Base(file), Format: out.Format.Name,
				VirtualSize: td.Size, BlockSize: td.BlockSize, Boot: td.Boot, FileBytes: allocated(file), SHA256: sum})
		}
		if tr.Config != nil {
			name := configFileName(tr.Config.MediaType)
			if err := os.WriteFile(filepath.Join(dir, name), []byte(tr.Config.Data), 0o644); err != nil {
				return err
			}
			sum := sha256.Sum256([]byte(tr.Config.Data))
			m.Config = &ManifestFile{File: name, MediaType: tr.Config.MediaType, SHA256: hex.EncodeToString(sum[:])}
		}
		data, err := json.MarshalIndent(m, "", "  ")
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, ManifestName), append(data, '\n'), 0o644)
	})
	if err != nil {
		os.RemoveAll(dir)
		return Manifest{}, err
	}
	return m, nil
}

// MachineImported describes a machine an import made.
type MachineImported struct {
	Machine string     `json:"machine"`
	Dir     string     `json:"dir"`
	Disks   []Imported `json:"disks"`
	Task    string     `json:"task"`
	Seconds float64    `json:"seconds"`
}

// ImportMachine creates the machine name, with its disks, from a machine
// image directory: every file's SHA-256 is checked against the manifest
// and every disk file vetted before anything is made; on any failure
// cairnd deletes the disks.
func ImportMachine(ctx context.Context, c *api.Client, dir, name string, o ImportOptions) (MachineImported, error) {
	start := time.Now()
	data, err := os.ReadFile(filepath.Join(dir, ManifestName))
	if err != nil {
		return MachineImported{}, fmt.Errorf("%w: %v (a machine image directory has a %s)", ErrRefused, err, ManifestName)
	}
	m, err := ParseManifest(data)
	if err != nil {
		return MachineImported{}, err
	}
	req := api.ImportRequest{Source: dir, Machine: &api.ImportMachine{Name: name, RenameDisks: map[string]string{},
		Description: "imported from " + dir}}
	var vetted []Vetted
	for _, md := range m.Disks {
		file := filepath.Join(dir, md.File)
		if err := checkSum(file, md.SHA256); err != nil {
			return MachineImported{}, err
		}
		vo := o.Vet
		vo.Format = md.Format
		v, err := Vet(ctx, file, vo)
		if err != nil {
			return MachineImported{}, err
		}
		vetted = append(vetted, v)
		disk := ImportedDiskName(name, m.Source, md.Name)
		req.Machine.RenameDisks[md.Name] = disk
		bs := ""
		if md.BlockSize > 0 {
			bs = fmt.Sprint(md.BlockSize)
		}
		req.Disks = append(req.Disks, api.ImportDisk{Name: disk, Size: api.Size(fmt.Sprint(alignUp(v.Size))), BlockSize: api.Size(bs),
			DataBytes: v.DataBytes, Description: "disk " + md.Name + " of image " + m.Image})
	}
	if m.Config != nil {
		doc, err := os.ReadFile(filepath.Join(dir, m.Config.File))
		if err != nil {
			return MachineImported{}, err
		}
		if sum := sha256.Sum256(doc); hex.EncodeToString(sum[:]) != m.Config.SHA256 {
			return MachineImported{}, fmt.Errorf("%w: %s does not match its SHA-256 in %s: the directory was changed or damaged", ErrRefused, m.Config.File, ManifestName)
		}
		req.Machine.Config = &api.Config{MediaType: m.Config.MediaType, Data: string(doc)}
	}
	tr, err := c.Import(ctx, req)
	if err != nil {
		return MachineImported{}, err
	}
	var total uint64
	for _, v := range vetted {
		total += uint64(v.Size)
	}
	err = run(ctx, c, tr, o.Progress, func(ctx context.Context, progress Progress) error {
		var base uint64
		for i, td := range tr.Disks {
			if err := convertIn(ctx, tr, td, vetted[i], progress, base, total); err != nil {
				return err
			}
			base += uint64(vetted[i].Size)
		}
		return nil
	})
	if err != nil {
		return MachineImported{}, err
	}
	out := MachineImported{Machine: name, Dir: dir, Task: tr.Task.ID, Seconds: time.Since(start).Seconds()}
	for i, td := range tr.Disks {
		v := vetted[i]
		out.Disks = append(out.Disks, Imported{Disk: td.Name, File: v.File, Format: v.Format.Name, VirtualSize: v.Size, DiskSize: td.Size,
			DataBytes: v.DataBytes, Task: tr.Task.ID})
	}
	return out, nil
}

// checkSum refuses a file whose SHA-256 is not want.
func checkSum(file, want string) error {
	got, err := fileSHA256(file)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrRefused, err)
	}
	if got != want {
		return fmt.Errorf("%w: %s does not match its SHA-256 in %s (%s, the manifest says %s): the directory was changed or damaged in transit",
			ErrRefused, file, ManifestName, got, want)
	}
	return nil
}

// fileSHA256 is the SHA-256 of a file's content, in hex.
func fileSHA256(file string) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read %s: %w", file, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
