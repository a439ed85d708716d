/*
 * Hull VMM test guest, entered through the 64-bit Linux boot protocol the
 * way a kernel is: long mode, RSI = boot_params. It reports what it was
 * handed on the serial port (E820, command line, initrd, MP table and its
 * local APIC), finds the virtio-mmio vsock device on the command line,
 * drives it by polling (no interrupts), answers one hybrid-vsock
 * connection from the host and echoes one message back. If there is a
 * virtio-net device on the command line too, it then asks who has 10.77.0.1
 * with ARP and reports the answer. Last, it connects to host port 5200 itself
 * and reports what it is told there.
 * It stays small: under PVM every instruction it runs is emulated.
 */
#include "guest.h"

#define LISTEN_PORT 1234
#define HOST_PORT 5200 /* the host service the guest connects to: <uds>_5200 */
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

static u8 sum(const u8 *p, u32 n) { u8 s = 0; while (n--) s += *p++; return s; }
/* The MP floating pointer, as Linux looks for it: "_MP_" on a 16-byte
 * boundary, length 1, bytes adding up to 0. */
static const u8 *find_mpf(u64 start, u64 end) {
    for (; start < end; start += 16) {
        const u8 *p = (const u8 *)start;
        if (*(const u32 *)p == 0x5f504d5f && p[8] == 1 && !sum(p, 16)) return p;
    }
    return 0;
}
/* Counts the processors of the MP table (the last KiB of base memory or
 * the BIOS area; the first KiB is skipped, the guest has no BIOS there). */
static void report_mptable(void) {
    const u8 *mpf = find_mpf(639 * 0x400, 640 * 0x400);
    if (!mpf) mpf = find_mpf(0xf0000, 0x100000);
    if (!mpf) stop("hull-payload: no MP floating pointer");
    const u8 *t = (const u8 *)(u64) * (const u32 *)(mpf + 4);
    if (*(const u32 *)t != 0x504d4350 || sum(t, *(const u16 *)(t + 4))) stop("hull-payload: bad MP configuration table");
    const u8 *e = t + 44;
    u32 cpus = 0, bsp = 0, irqs = 0;
    for (u32 i = *(const u16 *)(t + 34); i; i--) {
        if (*e == 0) { cpus++; bsp += (e[3] & 3) == 3; e += 20; }
        else { irqs += *e == 3; e += 8; }
    }
    puts_("mptable cpus="); putdec(cpus); puts_(" bsp="); putdec(bsp); puts_(" irqs="); putdec(irqs);
    /* This vCPU's local APIC LINT0 and LINT1, as the VMM set them. */
    puts_(" lint0="); puthex(rd32(0xfee00350)); puts_(" lint1="); puthex(rd32(0xfee00360)); puts_("\n");
}

/* virtio-net: its own rings and buffers, apart from the vsock device's,
 * which stays active. */
#define NET_MEM (MEM + 0x40000)
#define NET_BUF (MEM + 0x50000)
#define VNET_HDR 12
static struct queue netrx, nettx;
static u64 net_mmio;

static void net_post_rx(u16 slot) {
    netrx.d[slot].addr = NET_BUF + slot * 0x800; netrx.d[slot].len = 0x800; netrx.d[slot].flags = DESC_F_WRITE;
    make_available(net_mmio, 0, &netrx, slot);
}

static void net_send(const u8 *frame, u32 len) {
    u8 *buf = (u8 *)(NET_BUF + QSIZE * 0x800);
    zero(buf, VNET_HDR);
    copy(buf + VNET_HDR, frame, len);
    u16 slot = nettx.a->idx % QSIZE;
    nettx.d[slot].addr = (u64)buf; nettx.d[slot].len = VNET_HDR + len; nettx.d[slot].flags = 0;
    make_available(net_mmio, 1, &nettx, slot);
    wait_used(&nettx);
}

static void puthex8(u8 v) { outb(COM1, "0123456789abcdef"[v >> 4]); outb(COM1, "0123456789abcdef"[v & 15]); }
static void putmac(const u8 *m) { for (int i = 0; i < 6; i++) { if (i) outb(COM1, ':'); puthex8(m[i]); } }

static __attribute__((noreturn)) void net_test(u64 dev) {
    net_mmio = dev;
    wr32(dev + STATUS, 0);
    wr32(dev + STATUS, 1);
    wr32(dev + STATUS, 1 | 2);
    wr32(dev + DEV_FEAT_SEL, 0);
    if (!(rd32(dev + DEV_FEAT) & (1 << 5))) stop("hull-payload: no VIRTIO_NET_F_MAC");
    wr32(dev + DRV_FEAT_SEL, 0); wr32(dev + DRV_FEAT, 1 << 5);
    wr32(dev + DRV_FEAT_SEL, 1); wr32(dev + DRV_FEAT, 1);
    wr32(dev + STATUS, 1 | 2 | 8);
    if (!(rd32(dev + STATUS) & 8)) stop("hull-payload: net FEATURES_OK refused");
    setup_queue(dev, 0, &netrx, NET_MEM);
    setup_queue(dev, 1, &nettx, NET_MEM + 0x1000);
    wr32(dev + STATUS, 1 | 2 | 8 | 4);
    u8 mac[6];
    for (int i = 0; i < 6; i++) mac[i] = *(volatile u8 *)(dev + CONFIG + i);
    puts_("hull-payload: net ready mac="); putmac(mac); puts_("\n");

    /* Who has 10.77.0.1? Tell 10.77.0.2. */
    u8 arp[42] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0x08, 0x06,
                   0, 1, 8, 0, 6, 4, 0, 1, 0, 0, 0, 0, 0, 0, 10, 77, 0, 2,
                   0, 0, 0, 0, 0, 0, 10, 77, 0, 1 };
    copy(arp + 6, mac, 6);
    copy(arp + 22, mac, 6);
    /* Buffers after the request: until then the reply waits on the tap. */
    net_send(arp, sizeof arp);
    for (u16 i = 0; i < QSIZE; i++) net_post_rx(i);
    for (u32 tries = 0; tries < 200; tries++) {
        for (u32 spin = 0; spin < 100000; spin++) {
            if (*(volatile u16 *)&netrx.u->idx == netrx.last_used) { __asm__ volatile("pause"); continue; }
            barrier();
            struct used_elem e = netrx.u->ring[netrx.last_used++ % QSIZE];
            const u8 *f = (const u8 *)(NET_BUF + e.id * 0x800) + VNET_HDR;
            /* An ARP reply from 10.77.0.1 to us. */
            int reply = e.len >= VNET_HDR + 42 && f[12] == 0x08 && f[13] == 0x06 && f[21] == 2 &&
                        f[28] == 10 && f[29] == 77 && f[30] == 0 && f[31] == 1;
            for (int i = 0; i < 6; i++) reply &= f[i] == mac[i];
            if (reply) {
                puts_("hull-payload: 10.77.0.1 is at "); putmac(f + 22); puts_("\n");
                stop("hull-payload: done");
            }
            net_post_rx((u16)e.id);
        }
        /* The host may have brought the tap up late: ask again. */
        net_send(arp, sizeof arp);
    }
    stop("hull-payload: no ARP reply");
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

    report_mptable();

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
    puts_("hull-payload: answered\n");
    u64 net = find_virtio_device(cmdline, 1);
    if (net) net_test(net);

    /* Then a connection of its own, which the VMM opens to <uds>_5200. */
    struct hdr out = { .src_cid = GUEST_CID, .dst_cid = 2, .src_port = LISTEN_PORT + 1, .dst_port = HOST_PORT };
    fwd_cnt = 0;
    out.op = OP_REQUEST;
    send(&out, 0, 0);
    for (;;) {
        h = recv();
        if (h->dst_port != out.src_port || h->op == OP_CREDIT_UPDATE) continue; /* the first connection's end */
        if (h->op == OP_RST) { puts_("hull-payload: host port 5200 refused\n"); stop("hull-payload: done"); }
        if (h->op == OP_RESPONSE) break;
        stop("hull-payload: expected a response from port 5200");
    }
    out.op = OP_RW;
    send(&out, "hello", 5);
    do h = recv(); while (h->dst_port != out.src_port || h->op == OP_CREDIT_UPDATE);
    if (h->op != OP_RW) stop("hull-payload: expected data from port 5200");
    n = h->len < 50 ? h->len : 50;
    fwd_cnt += h->len;
    copy(msg, (u8 *)h + sizeof *h, n); msg[n] = 0;
    puts_("hull-payload: port 5200 says "); puts_(msg); puts_("\n");
    out.op = OP_SHUTDOWN; out.flags = 3;
    send(&out, 0, 0);
    stop("hull-payload: done");
}

__asm__(".section .text.entry\n"
        ".globl _start\n"
        "_start:\n"
        "  mov %rsi, %rdi\n"
        "  call main64\n"
        "1: jmp 1b\n");
