//! The FUSE protocol's messages as a guest kernel sends and receives them (include/uapi/
//! linux/fuse.h), as far as the tests need them; names follow the header. All fields are
//! little-endian on x86_64, as is the guest. The sizes are checked below, so every struct
//! is exactly its C layout without padding.

use vm_memory::ByteValued;

// Opcodes (`enum fuse_opcode`).
pub const FUSE_LOOKUP: u32 = 1;
pub const FUSE_SYMLINK: u32 = 6;
pub const FUSE_MKNOD: u32 = 8;
pub const FUSE_MKDIR: u32 = 9;
pub const FUSE_UNLINK: u32 = 10;
pub const FUSE_RMDIR: u32 = 11;
pub const FUSE_RENAME: u32 = 12;
pub const FUSE_LINK: u32 = 13;
pub const FUSE_WRITE: u32 = 16;
pub const FUSE_RELEASE: u32 = 18;
pub const FUSE_INIT: u32 = 26;
pub const FUSE_CREATE: u32 = 35;
pub const FUSE_RENAME2: u32 = 45;

/// The node id of the file system's root.
pub const FUSE_ROOT_ID: u64 = 1;
pub const FUSE_KERNEL_VERSION: u32 = 7;
/// The minor version the test driver speaks: 7.31 has RENAME2 and a `fuse_init_in`
/// without the `flags2` extension (7.36).
pub const FUSE_KERNEL_MINOR_VERSION: u32 = 31;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FuseInHeader {
    pub len: u32,
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    pub total_extlen: u16,
    pub padding: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FuseOutHeader {
    pub len: u32,
    pub error: i32,
    pub unique: u64,
}

/// `fuse_init_in` up to 7.35 (without the `flags2` extension).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FuseInitIn {
    pub major: u32,
    pub minor: u32,
    pub max_readahead: u32,
    pub flags: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FuseInitOut {
    pub major: u32,
    pub minor: u32,
    pub max_readahead: u32,
    pub flags: u32,
    pub max_background: u16,
    pub congestion_threshold: u16,
    pub max_write: u32,
    pub time_gran: u32,
    pub max_pages: u16,
    pub map_alignment: u16,
    pub flags2: u32,
    pub max_stack_depth: u32,
    pub unused: [u32; 6],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FuseAttr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: u64,
    pub mtime: u64,
    pub ctime: u64,
    pub atimensec: u32,
    pub mtimensec: u32,
    pub ctimensec: u32,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
    pub flags: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FuseEntryOut {
    pub nodeid: u64,
    pub generation: u64,
    pub entry_valid: u64,
    pub attr_valid: u64,
    pub entry_valid_nsec: u32,
    pub attr_valid_nsec: u32,
    pub attr: FuseAttr,
}

/// Followed by the name.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FuseMkdirIn {
    pub mode: u32,
    pub umask: u32,
}

/// Followed by the name.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FuseMknodIn {
    pub mode: u32,
    pub rdev: u32,
    pub umask: u32,
    pub padding: u32,
}

/// Followed by the name.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FuseCreateIn {
    pub flags: u32,
    pub mode: u32,
    pub umask: u32,
    pub open_flags: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FuseOpenOut {
    pub fh: u64,
    pub open_flags: u32,
    pub backing_id: i32,
}

/// Followed by the data.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FuseWriteIn {
    pub fh: u64,
    pub offset: u64,
    pub size: u32,
    pub write_flags: u32,
    pub lock_owner: u64,
    pub flags: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FuseWriteOut {
    pub size: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FuseReleaseIn {
    pub fh: u64,
    pub flags: u32,
    pub release_flags: u32,
    pub lock_owner: u64,
}

/// Followed by the old name and the new name.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FuseRenameIn {
    pub newdir: u64,
}

/// Followed by the old name and the new name.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FuseRename2In {
    pub newdir: u64,
    pub flags: u32,
    pub padding: u32,
}

/// Followed by the new name.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FuseLinkIn {
    pub oldnodeid: u64,
}

// SAFETY: plain repr(C) structs of integers without padding (the sizes below prove it), so
// every byte pattern is a valid value.
unsafe impl ByteValued for FuseInHeader {}
// SAFETY: as above.
unsafe impl ByteValued for FuseOutHeader {}
// SAFETY: as above.
unsafe impl ByteValued for FuseInitIn {}
// SAFETY: as above.
unsafe impl ByteValued for FuseInitOut {}
// SAFETY: as above.
unsafe impl ByteValued for FuseAttr {}
// SAFETY: as above.
unsafe impl ByteValued for FuseEntryOut {}
// SAFETY: as above.
unsafe impl ByteValued for FuseMkdirIn {}
// SAFETY: as above.
unsafe impl ByteValued for FuseMknodIn {}
// SAFETY: as above.
unsafe impl ByteValued for FuseCreateIn {}
// SAFETY: as above.
unsafe impl ByteValued for FuseOpenOut {}
// SAFETY: as above.
unsafe impl ByteValued for FuseWriteIn {}
// SAFETY: as above.
unsafe impl ByteValued for FuseWriteOut {}
// SAFETY: as above.
unsafe impl ByteValued for FuseReleaseIn {}
// SAFETY: as above.
unsafe impl ByteValued for FuseRenameIn {}
// SAFETY: as above.
unsafe impl ByteValued for FuseRename2In {}
// SAFETY: as above.
unsafe impl ByteValued for FuseLinkIn {}

const _: () = {
    use std::mem::size_of;
    assert!(size_of::<FuseInHeader>() == 40);
    assert!(size_of::<FuseOutHeader>() == 16);
    assert!(size_of::<FuseInitIn>() == 16);
    assert!(size_of::<FuseInitOut>() == 64);
    assert!(size_of::<FuseAttr>() == 88);
    assert!(size_of::<FuseEntryOut>() == 128);
    assert!(size_of::<FuseMkdirIn>() == 8);
    assert!(size_of::<FuseMknodIn>() == 16);
    assert!(size_of::<FuseCreateIn>() == 16);
    assert!(size_of::<FuseOpenOut>() == 16);
    assert!(size_of::<FuseWriteIn>() == 40);
    assert!(size_of::<FuseWriteOut>() == 8);
    assert!(size_of::<FuseReleaseIn>() == 24);
    assert!(size_of::<FuseRenameIn>() == 8);
    assert!(size_of::<FuseRename2In>() == 16);
    assert!(size_of::<FuseLinkIn>() == 8);
};
