package cow

import (
	"context"
	"testing"
	"time"
)

// TestAutomaticMetaSurvivesReopen: an automatic snapshot's policy,
// retention and given creation time are in its record, a retention
// rewrite is durable, and a manual snapshot has none of them.
func TestAutomaticMetaSurvivesReopen(t *testing.T) {
	d := newTestDisk(t, 4*testBS)
	taken := time.Date(2031, 1, 2, 3, 4, 0, 0, time.UTC)
	if _, err := d.v.CreateSnapshot(context.Background(), SnapshotMeta{Name: "auto-p-1", Kind: "auto", Policy: "p",
		RetentionDays: 30, Created: taken}); err != nil {
		t.Fatal(err)
	}
	d.snapshot("manual1")
	if err := d.v.SetRetention("auto-p-1", 7); err != nil {
		t.Fatal(err)
	}
	d.reopen()
	in, err := d.v.Snapshot("auto-p-1")
	if err != nil {
		t.Fatal(err)
	}
	if in.Policy != "p" || in.RetentionDays != 7 || !in.Created.Equal(taken) || in.Kind != "auto" {
		t.Fatalf("after reopen: policy %q retention %d created %v kind %q; want p, 7, %v, auto", in.Policy, in.RetentionDays, in.Created, in.Kind, taken)
	}
	m, _ := d.v.Snapshot("manual1")
	if m.Policy != "" || m.RetentionDays != 0 || time.Since(m.Created) > time.Minute {
		t.Fatalf("manual snapshot: policy %q retention %d created %v", m.Policy, m.RetentionDays, m.Created)
	}
	if err := d.v.SetRetention("nope", 1); err == nil {
		t.Fatal("SetRetention of a missing snapshot succeeded")
	}
}
