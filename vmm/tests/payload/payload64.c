/*
 * Hull VMM test guest, entered through the 64-bit Linux boot protocol the
 * way a kernel is: long mode, RSI = boot_params. It reports what it was
 * handed on the serial port, finds the virtio-mmio vsock device on the
 * command line, drives it by polling (no interrupts), answers one
 * hybrid-vsock connection from the host and echoes one message back.
 * It stays small: under PVM every instruction it runs is emulated.
 */
#include "guest.h"

#define LISTEN_PORT 1234
#define GUEST_CID 3
#define BUF_ALLOC 65536

struct __attribute__((packed)) hdr {
    u64 src_cid, dst_cid; u32 src_port, dst_port, len; u16 type, op; u32 flags, buf_alloc, fwd_cnt;
};
enum { OP_REQUEST = 1, OP_RESPONSE = 2, OP_RST = 3, OP_SHUTDOWN = 4, OP_RW = 5, OP_CREDIT_UPDATE = 6 };

#define MEM 0x400000ULL /* rings and buffers live here, above the payload */
static struct queue rxq, txq;
static u64 mmio;
static u32 fwd_cnt;

/* Gives the device receive buffers: header and data in one descriptor each. */
static void post_rx(u16 slot) {
    rxq.d[slot].addr = MEM + 0x10000 + slot * 0x1000; rxq.d[slot].len = 0x1000; rxq.d[slot].flags = DESC_F_WRITE;
    make_available(mmio, 0, &rxq, slot);
}

/* Waits for the next received packet; returns its buffer. */
static struct hdr *recv(void) {
    struct used_elem e = wait_used(&rxq);
    struct hdr *h = (struct hdr *)(MEM + 0x10000 + e.id * 0x1000);
    post_rx((u16)e.id);
    return h;
}

static void send(struct hdr *reply, const void *data, u32 len) {
    static u16 next;
    u16 slot = next++ % QSIZE;
    u8 *buf = (u8 *)(MEM + 0x20000 + slot * 0x1000);
    reply->len = len; reply->type = 1; reply->buf_alloc = BUF_ALLOC; reply->fwd_cnt = fwd_cnt;
    copy(buf, reply, sizeof *reply);
    copy(buf + sizeof *reply, data, len);
    txq.d[slot].addr = (u64)buf; txq.d[slot].len = sizeof *reply + len; txq.d[slot].flags = 0;
    make_available(mmio, 1, &txq, slot);
    while (*(volatile u16 *)&txq.u->idx != txq.a->idx) __asm__ volatile("pause");
}

void main64(u8 *bp) {
    puts_("hull-payload: 64-bit entry\n");
    if (*(u16 *)(bp + 0x1fe) != 0xaa55) stop("hull-payload: bad boot_params boot_flag");
    u32 e820 = bp[0x1e8];
    u64 ram = 0;
    for (u32 i = 0; i < e820; i++) {
        u8 *e = bp + 0x2d0 + i * 20;
        if (*(u32 *)(e + 16) == 1) ram += *(u64 *)(e + 8);
    }
    puts_("e820 entries="); putdec(e820); puts_(" ram="); puthex(ram); puts_("\n");
    const char *cmdline = boot_cmdline(bp);
    puts_("cmdline="); puts_(cmdline); puts_("\n");
    u32 initrd = *(u32 *)(bp + 0x218), initrd_size = *(u32 *)(bp + 0x21c);
    puts_("initrd size="); putdec(initrd_size); puts_(" starts=");
    for (u32 i = 0; i < 8 && i < initrd_size; i++) outb(COM1, ((u8 *)(u64)initrd)[i]);
    puts_("\n");

    mmio = find_virtio_device(cmdline, 19);
    if (!mmio) stop("hull-payload: no virtio-mmio vsock device on the command line");
    wr32(mmio + STATUS, 0);
    wr32(mmio + STATUS, 1);     /* ACKNOWLEDGE */
    wr32(mmio + STATUS, 1 | 2); /* DRIVER */
    wr32(mmio + DEV_FEAT_SEL, 1);
    if (!(rd32(mmio + DEV_FEAT) & 1)) stop("hull-payload: no VIRTIO_F_VERSION_1");
    wr32(mmio + DRV_FEAT_SEL, 0); wr32(mmio + DRV_FEAT, 0);
    wr32(mmio + DRV_FEAT_SEL, 1); wr32(mmio + DRV_FEAT, 1);
    wr32(mmio + STATUS, 1 | 2 | 8); /* FEATURES_OK */
    if (!(rd32(mmio + STATUS) & 8)) stop("hull-payload: FEATURES_OK refused");
    setup_queue(mmio, 0, &rxq, MEM);
    setup_queue(mmio, 1, &txq, MEM + 0x1000);
    wr32(mmio + STATUS, 1 | 2 | 8 | 4); /* DRIVER_OK */
    if (*(u32 *)(mmio + CONFIG) != GUEST_CID) stop("hull-payload: unexpected guest CID");
    for (u16 i = 0; i < QSIZE; i++) post_rx(i);
    puts_("hull-payload: vsock ready\n");

    struct hdr *h = recv();
    if (h->op != OP_REQUEST || h->dst_port != LISTEN_PORT) stop("hull-payload: expected a connection request");
    struct hdr reply = { .src_cid = GUEST_CID, .dst_cid = 2, .src_port = LISTEN_PORT, .dst_port = h->src_port };
    reply.op = OP_RESPONSE;
    send(&reply, 0, 0);
    puts_("hull-payload: connected\n");
    for (;;) {
        h = recv();
        if (h->op == OP_CREDIT_UPDATE) continue;
        if (h->op != OP_RW) stop("hull-payload: expected data");
        break;
    }
    u32 n = h->len;
    fwd_cnt += n;
    char msg[64] = "pong:";
    copy(msg + 5, (u8 *)h + sizeof *h, n < 50 ? n : 50);
    reply.op = OP_RW;
    send(&reply, msg, 5 + (n < 50 ? n : 50));
    reply.op = OP_SHUTDOWN; reply.flags = 3;
    send(&reply, 0, 0);
    stop("hull-payload: done");
}

__asm__(".section .text.entry\n"
        ".globl _start\n"
        "_start:\n"
        "  mov %rsi, %rdi\n"
        "  call main64\n"
        "1: jmp 1b\n");
