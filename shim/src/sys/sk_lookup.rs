//! Steering TCP connections to any loopback port of a network namespace
//! into one listening socket: a `BPF_PROG_TYPE_SK_LOOKUP` program attached
//! to the namespace. The accepted socket's local address is the one the
//! client dialed, so one listener serves every port, and nothing runs until
//! something connects.
//!
//! The program is 34 instructions, assembled here: no crate loads a
//! raw program without an ELF object and a C library (libbpf) behind it.
//! What it does, in C:
//!
//! ```c
//! if (ctx->protocol != IPPROTO_TCP) return SK_PASS;
//! if (ctx->family == AF_INET && ctx->local_ip4 == htonl(INADDR_LOOPBACK)) key = 0;
//! else if (ctx->family == AF_INET6 && ctx->local_ip6 == in6addr_loopback) key = 1;
//! else return SK_PASS;
//! sk = bpf_map_lookup_elem(&listeners, &key);
//! if (sk) { bpf_sk_assign(ctx, sk, 0); bpf_sk_release(sk); }
//! return SK_PASS;
//! ```
//!
//! A connection the program does not assign goes on to the namespace's
//! ordinary lookup.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

// From <linux/bpf.h>.
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_SOCKMAP: u32 = 15;
const BPF_PROG_TYPE_SK_LOOKUP: u32 = 30;
const BPF_SK_LOOKUP: u32 = 36;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const BPF_FUNC_MAP_LOOKUP_ELEM: i32 = 1;
const BPF_FUNC_SK_RELEASE: i32 = 86;
const BPF_FUNC_SK_ASSIGN: i32 = 124;
const SK_PASS: i32 = 1;

// Offsets in `struct bpf_sk_lookup`.
const CTX_FAMILY: i16 = 8;
const CTX_PROTOCOL: i16 = 12;
const CTX_LOCAL_IP4: i16 = 40;
const CTX_LOCAL_IP6: i16 = 44;

/// 127.0.0.1 and the last word of ::1 as the program loads them: network
/// byte order read as a little-endian word.
const LOOPBACK_IP4: i32 = 0x0100_007f;
const LOOPBACK_IP6_LAST: i32 = 0x0100_0000;

/// Which listener of the map serves a family.
const KEY_IPV4: u32 = 0;
const KEY_IPV6: u32 = 1;

/// One `struct bpf_insn`.
#[derive(Clone, Copy)]
#[repr(C)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

// The opcodes used (class | size/op | source).
const LDX_W: u8 = 0x61; // dst = *(u32 *)(src + off)
const ST_W: u8 = 0x62; // *(u32 *)(dst + off) = imm
const MOV64_X: u8 = 0xbf;
const MOV64_K: u8 = 0xb7;
const ADD64_K: u8 = 0x07;
const OR64_X: u8 = 0x4f; // dst |= src
const JA: u8 = 0x05;
const JEQ_K: u8 = 0x15;
const JNE_K: u8 = 0x55;
const LD_DW_IMM: u8 = 0x18;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R6: u8 = 6;
const R7: u8 = 7;
const R10: u8 = 10;

/// Where the program's jumps go.
const V4: usize = 16;
const LOOKUP: usize = 19;
const PASS: usize = 32;

/// A jump at instruction `at` to instruction `to`.
const fn jump(code: u8, dst: u8, imm: i32, at: usize, to: usize) -> Insn {
    insn(code, dst, 0, (to - at - 1) as i16, imm)
}

/// The program, with `map_fd` in its one map reference; the comments
/// number the instructions the jumps count.
fn program(map_fd: i32) -> Vec<Insn> {
    let code = vec![
        /* 0 */ insn(MOV64_X, R6, R1, 0, 0),
        /* 1 */ insn(LDX_W, R2, R6, CTX_PROTOCOL, 0),
        /* 2 */ jump(JNE_K, R2, libc::IPPROTO_TCP, 2, PASS),
        /* 3 */ insn(LDX_W, R2, R6, CTX_FAMILY, 0),
        /* 4 */ jump(JEQ_K, R2, libc::AF_INET, 4, V4),
        /* 5 */ jump(JNE_K, R2, libc::AF_INET6, 5, PASS),
        /* 6 */ insn(LDX_W, R2, R6, CTX_LOCAL_IP6, 0),
        /* 7 */ insn(LDX_W, R3, R6, CTX_LOCAL_IP6 + 4, 0),
        /* 8 */ insn(OR64_X, R2, R3, 0, 0),
        /* 9 */ insn(LDX_W, R3, R6, CTX_LOCAL_IP6 + 8, 0),
        /* 10 */ insn(OR64_X, R2, R3, 0, 0),
        /* 11 */ jump(JNE_K, R2, 0, 11, PASS),
        /* 12 */ insn(LDX_W, R2, R6, CTX_LOCAL_IP6 + 12, 0),
        /* 13 */ jump(JNE_K, R2, LOOPBACK_IP6_LAST, 13, PASS),
        /* 14 */ insn(ST_W, R10, 0, -4, KEY_IPV6 as i32),
        /* 15 */ jump(JA, 0, 0, 15, LOOKUP),
        /* 16 V4 */ insn(LDX_W, R2, R6, CTX_LOCAL_IP4, 0),
        /* 17 */ jump(JNE_K, R2, LOOPBACK_IP4, 17, PASS),
        /* 18 */ insn(ST_W, R10, 0, -4, KEY_IPV4 as i32),
        /* 19 LOOKUP */ insn(LD_DW_IMM, R1, BPF_PSEUDO_MAP_FD, 0, map_fd),
        /* 20 */ insn(0, 0, 0, 0, 0),
        /* 21 */ insn(MOV64_X, R2, R10, 0, 0),
        /* 22 */ insn(ADD64_K, R2, 0, 0, -4),
        /* 23 */ insn(CALL, 0, 0, 0, BPF_FUNC_MAP_LOOKUP_ELEM),
        /* 24 */ jump(JEQ_K, R0, 0, 24, PASS),
        /* 25 */ insn(MOV64_X, R7, R0, 0, 0),
        /* 26 */ insn(MOV64_X, R1, R6, 0, 0),
        /* 27 */ insn(MOV64_X, R2, R7, 0, 0),
        /* 28 */ insn(MOV64_K, R3, 0, 0, 0),
        /* 29 */ insn(CALL, 0, 0, 0, BPF_FUNC_SK_ASSIGN),
        /* 30 */ insn(MOV64_X, R1, R7, 0, 0),
        /* 31 */ insn(CALL, 0, 0, 0, BPF_FUNC_SK_RELEASE),
        /* 32 PASS */ insn(MOV64_K, R0, 0, 0, SK_PASS),
        /* 33 */ insn(EXIT, 0, 0, 0, 0),
    ];
    debug_assert_eq!(code.len(), PASS + 2);
    code
}

fn bpf(cmd: libc::c_long, attr: &mut [u64]) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, zero-padded `union bpf_attr` prefix of the
    // size passed; the kernel reads it (and writes nothing back for the
    // commands used here) and reads the buffers it points to, which
    // outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr) as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn bpf_fd(cmd: libc::c_long, attr: &mut [u64]) -> io::Result<OwnedFd> {
    let fd = bpf(cmd, attr)?;
    // SAFETY: these commands return a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Two u32 fields as one word of `union bpf_attr` (little-endian x86_64).
fn pair(low: u32, high: u32) -> u64 {
    u64::from(low) | (u64::from(high) << 32)
}

/// The attached program and what it holds; dropping it detaches the
/// program from the namespace.
#[derive(Debug)]
pub struct LoopbackSteering {
    _link: OwnedFd,
    _program: OwnedFd,
    _listeners: OwnedFd,
}

/// Steers TCP connections to any port of 127.0.0.1 in the network namespace
/// `netns` to `ipv4`, and to any port of ::1 to `ipv6`: listening TCP
/// sockets of that namespace.
pub fn steer_loopback(
    netns: BorrowedFd,
    ipv4: BorrowedFd,
    ipv6: Option<BorrowedFd>,
) -> io::Result<LoopbackSteering> {
    let context =
        |what: &'static str| move |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    // map_type, key_size; value_size, max_entries; map_flags.
    let mut attr = [pair(BPF_MAP_TYPE_SOCKMAP, 4), pair(8, 2), 0];
    let listeners = bpf_fd(BPF_MAP_CREATE, &mut attr).map_err(context("creating a socket map"))?;
    for (key, socket) in [(KEY_IPV4, Some(ipv4)), (KEY_IPV6, ipv6)] {
        let Some(socket) = socket else { continue };
        let value = socket.as_raw_fd() as u64;
        // map_fd; key; value; flags (BPF_ANY).
        let mut attr = [
            pair(listeners.as_raw_fd() as u32, 0),
            &key as *const u32 as u64,
            &value as *const u64 as u64,
            0,
        ];
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr)
            .map_err(context("adding a listener to the socket map"))?;
    }

    let code = program(listeners.as_raw_fd());
    let license = c"GPL";
    let load = |log: &mut [u8]| {
        // prog_type, insn_cnt; insns; license; log_level, log_size; log_buf;
        // kern_version, prog_flags; prog_name (16 bytes); prog_ifindex,
        // expected_attach_type.
        let mut attr = [
            pair(BPF_PROG_TYPE_SK_LOOKUP, code.len() as u32),
            code.as_ptr() as u64,
            license.as_ptr() as u64,
            pair(u32::from(!log.is_empty()), log.len() as u32),
            if log.is_empty() {
                0
            } else {
                log.as_mut_ptr() as u64
            },
            0,
            u64::from_le_bytes(*b"hull_loo"),
            u64::from_le_bytes(*b"pback\0\0\0"),
            pair(0, BPF_SK_LOOKUP),
        ];
        bpf_fd(BPF_PROG_LOAD, &mut attr)
    };
    let program = load(&mut []).or_else(|err| {
        // Load again with the verifier's log, to say why.
        let mut log = vec![0u8; 16 * 1024];
        load(&mut log).map_err(|_| {
            let text = String::from_utf8_lossy(&log);
            let text = text.trim_end_matches('\0').trim();
            io::Error::new(
                err.kind(),
                format!("loading the sk_lookup program: {err}: {text}"),
            )
        })
    })?;

    // prog_fd, target_fd; attach_type, flags.
    let mut attr = [
        pair(program.as_raw_fd() as u32, netns.as_raw_fd() as u32),
        pair(BPF_SK_LOOKUP, 0),
    ];
    let link = bpf_fd(BPF_LINK_CREATE, &mut attr).map_err(context(
        "attaching the sk_lookup program to the network namespace",
    ))?;
    Ok(LoopbackSteering {
        _link: link,
        _program: program,
        _listeners: listeners,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
    use std::os::fd::AsFd;

    #[test]
    fn the_jumps_land_where_the_labels_say() {
        let code = program(7);
        let target = |at: usize| (at as i64 + 1 + i64::from(code[at].off)) as usize;
        for at in [2, 5, 11, 13, 17, 24] {
            assert_eq!(target(at), PASS, "jump at {at}");
        }
        assert_eq!(target(4), V4);
        assert_eq!(target(15), LOOKUP);
        assert_eq!(code[LOOKUP].imm, 7);
        assert_eq!(code[PASS + 1].code, EXIT);
    }

    /// In a network namespace of its own (a thread's), connections to
    /// ports nobody listens on reach the two listeners, which see the
    /// address that was dialed; other addresses are left alone. (As root,
    /// like the shim.)
    #[test]
    fn every_loopback_port_reaches_the_listener() {
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let up = std::process::Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
                .unwrap();
            assert!(up.success());
            let netns = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
            let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
            let v6 = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).unwrap();
            let _steering = steer_loopback(netns.as_fd(), v4.as_fd(), Some(v6.as_fd())).unwrap();

            for (dial, listener) in [("127.0.0.1:8080", &v4), ("[::1]:443", &v6)] {
                let dial: SocketAddr = dial.parse().unwrap();
                let mut client = TcpStream::connect(dial).unwrap();
                let (mut accepted, _) = listener.accept().unwrap();
                assert_eq!(accepted.local_addr().unwrap(), dial);
                client.write_all(b"x").unwrap();
                let mut byte = [0u8];
                accepted.read_exact(&mut byte).unwrap();
            }
            // 127.0.0.2 is loopback too, but not what containerd dials.
            let err = TcpStream::connect("127.0.0.2:8080").unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        })
        .join()
        .unwrap();
    }
}
