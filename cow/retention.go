package cow

// SetRetention rewrites how long an automatic snapshot is kept
// (SnapshotInfo.RetentionDays), durably: on return the record says days.
// cow keeps the figure for its caller and never acts on it.
func (v *Volume) SetRetention(name string, days int) error {
	if v.st == nil {
		return errNoStore
	}
	v.sealMu.Lock() // no delete drops the snapshot meanwhile
	defer v.sealMu.Unlock()
	v.mu.Lock()
	s, ok := v.findLocked(name)
	if !ok {
		v.mu.Unlock()
		return notFound(name)
	}
	if s.rec.RetentionDays == days {
		v.mu.Unlock()
		return nil
	}
	s.rec.RetentionDays = days
	v.mu.Unlock()
	return v.persistRecord(s)
}
