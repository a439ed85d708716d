/*
 * Hull VMM test guest for virtio-fs, entered through the 64-bit Linux boot
 * protocol. It finds the virtio-fs device on the command line, reports its
 * tag, sets it up as a driver would (which makes hull-vmm start the rings
 * in virtiofsd) and sends two FUSE requests on the request queue, polling
 * for the replies: FUSE_INIT, then FUSE_LOOKUP of "hello.txt" in the
 * shared directory, whose size it reports.
 */
#include "guest.h"

#define MEM 0x400000ULL /* rings and buffers live here, above the payload */
#define REQ (MEM + 0x10000)
#define REPLY (MEM + 0x11000)
#define REPLY_LEN 0x1000

/* include/uapi/linux/fuse.h */
enum { FUSE_LOOKUP = 1, FUSE_INIT = 26 };
struct fuse_in_header { u32 len, opcode; u64 unique, nodeid; u32 uid, gid, pid; u16 total_extlen, padding; };
struct fuse_init_in { u32 major, minor, max_readahead, flags; };
struct fuse_out_header { u32 len; int error; u64 unique; };
struct fuse_init_out { u32 major, minor; /* the rest is not looked at */ };
struct fuse_entry_out { u64 nodeid, generation, entry_valid, attr_valid; u32 entry_valid_nsec, attr_valid_nsec;
                        u64 ino, size; /* the rest of fuse_attr is not looked at */ };

static u64 mmio;
static struct queue hiprio, requests;
static u64 unique;

/* Sends `body` after a header for `opcode` on the request queue: one
 * device-readable descriptor, one device-writable for the reply. Returns
 * the reply header; its body follows it. */
static struct fuse_out_header *fuse(u32 opcode, u64 nodeid, const void *body, u32 len) {
    struct fuse_in_header *in = (struct fuse_in_header *)REQ;
    zero(in, sizeof *in);
    in->len = sizeof *in + len; in->opcode = opcode; in->unique = ++unique; in->nodeid = nodeid;
    copy(in + 1, body, len);
    zero((void *)REPLY, REPLY_LEN);
    requests.d[0].addr = REQ; requests.d[0].len = in->len; requests.d[0].flags = DESC_F_NEXT; requests.d[0].next = 1;
    requests.d[1].addr = REPLY; requests.d[1].len = REPLY_LEN; requests.d[1].flags = DESC_F_WRITE;
    make_available(mmio, 1, &requests, 0);
    struct used_elem e = wait_used(&requests);
    struct fuse_out_header *out = (struct fuse_out_header *)REPLY;
    if (e.id != 0 || out->unique != unique || e.len != out->len) stop("hull-payload: reply does not match the request");
    return out;
}

void main64(u8 *bp) {
    puts_("hull-payload: 64-bit entry\n");
    mmio = find_virtio_device(boot_cmdline(bp), 26);
    if (!mmio) stop("hull-payload: no virtio-mmio virtio-fs device on the command line");
    char tag[37];
    copy(tag, (void *)(mmio + CONFIG), 36);
    tag[36] = 0;
    puts_("fs tag="); puts_(tag); puts_(" request queues="); putdec(rd32(mmio + CONFIG + 36)); puts_("\n");

    wr32(mmio + STATUS, 0);
    wr32(mmio + STATUS, 1);     /* ACKNOWLEDGE */
    wr32(mmio + STATUS, 1 | 2); /* DRIVER */
    wr32(mmio + DEV_FEAT_SEL, 1);
    if (!(rd32(mmio + DEV_FEAT) & 1)) stop("hull-payload: no VIRTIO_F_VERSION_1");
    wr32(mmio + DRV_FEAT_SEL, 0); wr32(mmio + DRV_FEAT, 0);
    wr32(mmio + DRV_FEAT_SEL, 1); wr32(mmio + DRV_FEAT, 1);
    wr32(mmio + STATUS, 1 | 2 | 8); /* FEATURES_OK */
    if (!(rd32(mmio + STATUS) & 8)) stop("hull-payload: FEATURES_OK refused");
    setup_queue(mmio, 0, &hiprio, MEM);
    setup_queue(mmio, 1, &requests, MEM + 0x1000);
    wr32(mmio + STATUS, 1 | 2 | 8 | 4); /* DRIVER_OK: the rings start in virtiofsd */
    if (rd32(mmio + STATUS) != (1 | 2 | 8 | 4)) stop("hull-payload: the device needs a reset");
    puts_("hull-payload: virtio-fs ready\n");

    struct fuse_init_in init = { .major = 7, .minor = 31 };
    struct fuse_out_header *out = fuse(FUSE_INIT, 0, &init, sizeof init);
    struct fuse_init_out *init_out = (struct fuse_init_out *)(out + 1);
    puts_("fuse init error="); putdec((u32)-out->error);
    puts_(" major="); putdec(init_out->major); puts_("\n");

    out = fuse(FUSE_LOOKUP, 1, "hello.txt", 10);
    struct fuse_entry_out *entry = (struct fuse_entry_out *)(out + 1);
    puts_("lookup hello.txt error="); putdec((u32)-out->error);
    puts_(" size="); putdec(out->error ? 0 : entry->size); puts_("\n");
    stop("hull-payload: done");
}

__asm__(".section .text.entry\n"
        ".globl _start\n"
        "_start:\n"
        "  mov %rsi, %rdi\n"
        "  call main64\n"
        "1: jmp 1b\n");
