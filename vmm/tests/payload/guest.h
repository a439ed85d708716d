/*
 * What Hull's C test guests share: fixed-size types, the serial port,
 * stopping the VM, a few string and memory helpers, and the virtio-mmio
 * register offsets. Freestanding: no libc.
 */
#ifndef HULL_TEST_GUEST_H
#define HULL_TEST_GUEST_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define COM1 0x3f8

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline u32 rd32(u64 a) { return *(volatile u32 *)a; }
static inline void wr32(u64 a, u32 v) { *(volatile u32 *)a = v; }
static inline void barrier(void) { __asm__ volatile("mfence" ::: "memory"); }

static void puts_(const char *s) { while (*s) outb(COM1, (u8)*s++); }
static void puthex(u64 v) {
    char b[19]; int i = 18; b[i] = 0;
    do { b[--i] = "0123456789abcdef"[v & 15]; v >>= 4; } while (v);
    b[--i] = 'x'; b[--i] = '0'; puts_(b + i);
}
static void putdec(u64 v) { char b[21]; int i = 20; b[i] = 0; do { b[--i] = '0' + v % 10; v /= 10; } while (v); puts_(b + i); }
/* Ends the VM the way a guest reboots: the i8042 reset line. (With the
 * in-kernel irqchip, HLT only sleeps the vCPU; it never exits to the VMM.) */
static __attribute__((noreturn)) void stop(const char *why) {
    puts_(why); puts_("\n");
    outb(0x64, 0xfe);
    for (;;) __asm__ volatile("pause");
}
static void copy(void *d, const void *s, u32 n) { u8 *dd = d; const u8 *ss = s; while (n--) *dd++ = *ss++; }
static void zero(void *d, u32 n) { u8 *dd = d; while (n--) *dd++ = 0; }

static const char *find(const char *s, const char *w) {
    for (; *s; s++) { const char *a = s, *b = w; while (*b && *a == *b) a++, b++; if (!*b) return a; }
    return 0;
}
static u64 parse_hex(const char *s) {
    u64 v = 0;
    for (;; s++) {
        u8 c = *s;
        if (c >= '0' && c <= '9') v = v * 16 + c - '0';
        else if (c >= 'a' && c <= 'f') v = v * 16 + c - 'a' + 10;
        else return v;
    }
}

/* virtio-mmio registers */
enum { MAGIC = 0x0, VERSION = 0x4, DEVICE_ID = 0x8, DEV_FEAT = 0x10, DEV_FEAT_SEL = 0x14,
       DRV_FEAT = 0x20, DRV_FEAT_SEL = 0x24, QSEL = 0x30, QNUM_MAX = 0x34, QNUM = 0x38,
       QREADY = 0x44, QNOTIFY = 0x50, STATUS = 0x70, QDESC = 0x80, QDRIVER = 0x90, QDEVICE = 0xa0,
       CONFIG = 0x100 };

/* The register window of the first virtio-mmio device of type `id` on the
 * command line, or 0. */
static u64 find_virtio_device(const char *cmdline, u32 id) {
    const char *entry = "virtio_mmio.device=4K@0x";
    for (const char *at = find(cmdline, entry); at; at = find(at, entry)) {
        u64 base = parse_hex(at);
        if (rd32(base + MAGIC) == 0x74726976 && rd32(base + VERSION) == 2 && rd32(base + DEVICE_ID) == id)
            return base;
    }
    return 0;
}

/* Split virtqueues of QSIZE entries (every guest uses the same small size):
 * descriptor table, available and used rings in one page from `base`. */
#define QSIZE 4
struct desc { u64 addr; u32 len; u16 flags; u16 next; };
struct avail { u16 flags; u16 idx; u16 ring[QSIZE]; };
struct used_elem { u32 id; u32 len; };
struct used { u16 flags; u16 idx; struct used_elem ring[QSIZE]; };
struct queue { struct desc *d; struct avail *a; struct used *u; u16 last_used; };
enum { DESC_F_NEXT = 1, DESC_F_WRITE = 2 };

static void setup_queue(u64 mmio, int index, struct queue *q, u64 base) {
    q->d = (struct desc *)base; q->a = (struct avail *)(base + 0x100); q->u = (struct used *)(base + 0x200);
    zero((void *)base, 0x300); q->last_used = 0;
    wr32(mmio + QSEL, index);
    if (rd32(mmio + QNUM_MAX) < QSIZE) stop("hull-payload: queue too small");
    wr32(mmio + QNUM, QSIZE);
    wr32(mmio + QDESC, (u32)base); wr32(mmio + QDESC + 4, 0);
    wr32(mmio + QDRIVER, (u32)(base + 0x100)); wr32(mmio + QDRIVER + 4, 0);
    wr32(mmio + QDEVICE, (u32)(base + 0x200)); wr32(mmio + QDEVICE + 4, 0);
    wr32(mmio + QREADY, 1);
}

/* Makes the chain starting at descriptor `head` available and notifies. */
static void make_available(u64 mmio, int index, struct queue *q, u16 head) {
    q->a->ring[q->a->idx % QSIZE] = head;
    barrier();
    q->a->idx++;
    wr32(mmio + QNOTIFY, index);
}

/* Waits (polling: these guests take no interrupts) for the next used chain. */
static struct used_elem wait_used(struct queue *q) {
    while (*(volatile u16 *)&q->u->idx == q->last_used) __asm__ volatile("pause");
    barrier();
    return q->u->ring[q->last_used++ % QSIZE];
}

/* The command line from the 64-bit boot protocol's boot_params. */
static const char *boot_cmdline(const u8 *bp) { return (const char *)(u64) * (const u32 *)(bp + 0x228); }

#endif
