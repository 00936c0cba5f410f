// Package creds runs file-system work with another user's file-system
// identity, so that root, recovering a state another user's transaction left
// (or planted), can do no more there than that user could.
//
// Linux keeps credentials per thread: Do runs a function on a goroutine
// locked to its own OS thread, whose file-system uid and gid, supplementary
// groups and effective capabilities it changes with raw system calls
// (setfsuid, setfsgid, setgroups and capset affect the calling thread only).
// The goroutine never unlocks the thread, so the runtime discards the thread
// when the function returns: no other goroutine ever runs with the changed
// credentials, and none of this process's other threads is touched. The
// runtime spawns new threads from a clean template thread while one is
// locked in such a state.
//
// Changing the fsuid from 0 drops the file capabilities (CAP_CHOWN,
// CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID, ...) from the thread's
// effective set; Enter clears the rest (CAP_SETFCAP among them, which would
// let a forged record set security.capability).
package creds

import (
	"fmt"
	"os/user"
	"runtime"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ID is a file-system identity.
type ID struct {
	UID, GID uint32
	Groups   []uint32
}

// Of returns the identity of user uid as the user database knows it: its
// primary group and supplementary groups. A uid the database does not know
// gets gid uid and no supplementary groups.
func Of(uid uint32) ID {
	id := ID{UID: uid, GID: uid}
	u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10))
	if err != nil {
		return id
	}
	if g, err := strconv.ParseUint(u.Gid, 10, 32); err == nil {
		id.GID = uint32(g)
	}
	gids, err := u.GroupIds()
	if err != nil {
		return id
	}
	for _, s := range gids {
		if g, err := strconv.ParseUint(s, 10, 32); err == nil {
			id.Groups = append(id.Groups, uint32(g))
		}
	}
	return id
}

func (id ID) String() string { return fmt.Sprintf("uid %d gid %d", id.UID, id.GID) }

// Enter gives the calling thread id's file-system identity and no effective
// capabilities. The caller must have locked the goroutine to its thread
// (runtime.LockOSThread) and must never unlock it.
func (id ID) Enter() error {
	groups := id.Groups
	if groups == nil {
		groups = []uint32{}
	}
	var p uintptr
	if len(groups) > 0 {
		p = uintptr(unsafe.Pointer(&groups[0]))
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(groups)), p, 0); e != 0 {
		return fmt.Errorf("act as %v: setgroups: %w", id, e)
	}
	unix.RawSyscall(unix.SYS_SETFSGID, uintptr(id.GID), 0, 0)
	unix.RawSyscall(unix.SYS_SETFSUID, uintptr(id.UID), 0, 0)
	// setfsuid and setfsgid return the previous value whatever happens: a
	// call with an invalid id reads the current one.
	gid, _, _ := unix.RawSyscall(unix.SYS_SETFSGID, ^uintptr(0), 0, 0)
	uid, _, _ := unix.RawSyscall(unix.SYS_SETFSUID, ^uintptr(0), 0, 0)
	if uint32(uid) != id.UID || uint32(gid) != id.GID {
		return fmt.Errorf("act as %v: the file-system identity is uid %d gid %d", id, uint32(uid), uint32(gid))
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("act as %v: capget: %w", id, err)
	}
	for i := range data {
		data[i].Effective, data[i].Inheritable = 0, 0
	}
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("act as %v: capset: %w", id, err)
	}
	return nil
}

// Do runs fn with id's file-system identity (see Enter) on a thread of its
// own, and returns its error. A nil id runs fn as this process is.
func Do(id *ID, fn func() error) error {
	if id == nil {
		return fn()
	}
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
		if err := id.Enter(); err != nil {
			done <- err
			return
		}
		done <- fn()
	}()
	return <-done
}

// Worker returns a function for each worker goroutine of a pool to call
// first when it must act as id (nil: nothing to do): it locks the goroutine
// to its thread for good and enters id there.
func Worker(id *ID) func() error {
	if id == nil {
		return nil
	}
	return func() error {
		runtime.LockOSThread()
		return id.Enter()
	}
}

// For returns the identity to act as on state owned by uid: nil when this
// process is not root (it can only act as itself) or uid is root, else
// uid's identity.
func For(uid uint32) *ID {
	if unix.Geteuid() != 0 || uid == 0 {
		return nil
	}
	id := Of(uid)
	return &id
}
