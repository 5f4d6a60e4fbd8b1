package store

// Space is the store's filesystem as the store sees it.
type Space struct {
	Dir         string // the store's directory
	Free        uint64 // bytes free for unprivileged writers (statfs f_bavail); the reserve is not free
	Reserve     uint64 // the reserve's full size (Options.ReserveBytes)
	ReserveHeld uint64 // bytes the reserve holds now: less than Reserve while the store's upkeep uses it
	StopBelow   uint64 // chunk writes (copy-out) stop while Free is below this
}

// Space reports the store's filesystem and reserve; all zero in memory.
func (s *Store) Space() (Space, error) {
	if s.dir == "" {
		return Space{}, nil
	}
	free, err := freeBytes(s.dir)
	if err != nil {
		return Space{}, s.wrapErr("space", err)
	}
	held, target := s.slop.state()
	return Space{Dir: s.dir, Free: free, Reserve: uint64(target), ReserveHeld: uint64(held), StopBelow: s.minFree}, nil
}

// RoomForData returns block.ErrNoSpace, with a message saying what to
// do, while chunk writes would be refused, or the error that broke the
// store (fault.go): a new snapshot would fail at once.
func (s *Store) RoomForData() error {
	if err := s.Broken(); err != nil {
		return err
	}
	release, err := s.space.reserve(writeData, 0)
	if err != nil {
		return err
	}
	release()
	return nil
}
