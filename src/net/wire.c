/*
 * The wire header. Every frame is this fixed 48-byte little-endian header followed
 * by frame_len payload bytes. A message longer than one frame (frame_bytes, a
 * configuration value) travels as several frames with the same type, id, clock and
 * tag; every frame but the last carries the MORE flag, and every frame states the
 * whole message's length so that the receiver can allocate it once, bounded by
 * max_message_bytes, before the payload arrives.
 *
 *   offset  width  field
 *   0       4      magic: the bytes "PTRL"
 *   4       1      version: 1
 *   5       1      type: 0..31 petrel's protocol, 32..255 the layers above
 *   6       2      flags: 0x1 MORE, 0x2 RPC request, 0x4 RPC reply; others must be 0
 *   8       4      source rank
 *   12      4      id: table or collective id
 *   16      8      clock, signed
 *   24      8      tag: RPC request id, else 0
 *   32      4      frame_len: payload bytes in this frame
 *   36      4      msg_len: payload bytes in the whole message
 *   40      4      checksum: CRC-32C of bytes 0..39
 *   44      4      reserved, 0
 *
 * The checksum covers the header only: it catches framing errors and garbage
 * before anything is allocated; TCP and shared memory already protect payloads.
 */
#include "net_impl.h"

#include <string.h>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

static void put32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void put64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const unsigned char *p) {
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

/* ---- CRC-32C ----------------------------------------------------------------- */

static uint32_t crc_table[256];

static void crc_table_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
        crc_table[i] = c;
    }
}

static uint32_t crc32c_table(uint32_t crc, const unsigned char *p, size_t len) {
    static _Atomic int ready;
    if (!ready) {
        crc_table_init(); /* idempotent: racing threads write the same values */
        ready = 1;
    }
    crc = ~crc;
    while (len--) crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(uint32_t crc, const unsigned char *p,
                                                            size_t len) {
    uint64_t c = ~crc;
    for (; len >= 8; len -= 8, p += 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = _mm_crc32_u64(c, v);
    }
    uint32_t c32 = (uint32_t)c;
    while (len--) c32 = _mm_crc32_u8(c32, *p++);
    return ~c32;
}
#endif

uint32_t petreli_crc32c(uint32_t crc, const void *data, size_t len) {
#if defined(__x86_64__)
    static _Atomic int hw = -1;
    if (hw < 0) hw = __builtin_cpu_supports("sse4.2") ? 1 : 0;
    if (hw) return crc32c_hw(crc, data, len);
#endif
    return crc32c_table(crc, data, len);
}

/* ---- header -------------------------------------------------------------------- */

void petreli_wire_encode(const petreli_wire_header *h, unsigned char *out) {
    put32(out, PETRELI_WIRE_MAGIC);
    out[4] = PETRELI_WIRE_VERSION;
    out[5] = h->type;
    out[6] = (unsigned char)h->flags;
    out[7] = (unsigned char)(h->flags >> 8);
    put32(out + 8, h->src);
    put32(out + 12, h->id);
    put64(out + 16, (uint64_t)h->clock);
    put64(out + 24, h->tag);
    put32(out + 32, h->frame_len);
    put32(out + 36, h->msg_len);
    put32(out + 40, petreli_crc32c(0, out, 40));
    put32(out + 44, 0);
}

petrel_err petreli_wire_decode(const unsigned char *in, const petreli_wire_limits *lim,
                               petreli_wire_header *out) {
    uint32_t magic = get32(in);
    if (magic != PETRELI_WIRE_MAGIC)
        return petrel_error_set(PETREL_ERR_FORMAT, "bad magic %08x (expected \"PTRL\")", magic);
    if (in[4] != PETRELI_WIRE_VERSION)
        return petrel_error_set(PETREL_ERR_FORMAT, "wire version %u, this petrel speaks %u", in[4],
                                PETRELI_WIRE_VERSION);
    uint32_t sum = get32(in + 40), want = petreli_crc32c(0, in, 40);
    if (sum != want)
        return petrel_error_set(PETREL_ERR_FORMAT, "header checksum %08x, computed %08x", sum,
                                want);
    petreli_wire_header h = {
        .type = in[5],
        .flags = (uint16_t)(in[6] | in[7] << 8),
        .src = get32(in + 8),
        .id = get32(in + 12),
        .clock = (int64_t)get64(in + 16),
        .tag = get64(in + 24),
        .frame_len = get32(in + 32),
        .msg_len = get32(in + 36),
    };
    if (h.flags & ~PETRELI_FLAGS_KNOWN)
        return petrel_error_set(PETREL_ERR_FORMAT, "unknown flags %04x", h.flags);
    if (get32(in + 44) != 0) return petrel_error_set(PETREL_ERR_FORMAT, "reserved field not 0");
    if (h.src >= (uint32_t)lim->size)
        return petrel_error_set(PETREL_ERR_FORMAT, "source rank %u in a job of %d", h.src,
                                lim->size);
    if (h.frame_len > lim->frame_bytes)
        return petrel_error_set(PETREL_ERR_FORMAT, "frame of %u bytes exceeds the %u-byte limit",
                                h.frame_len, lim->frame_bytes);
    if (h.msg_len > lim->max_message_bytes)
        return petrel_error_set(PETREL_ERR_FORMAT,
                                "message of %u bytes exceeds the %llu-byte limit", h.msg_len,
                                (unsigned long long)lim->max_message_bytes);
    if (h.frame_len > h.msg_len)
        return petrel_error_set(PETREL_ERR_FORMAT, "frame of %u bytes in a message of %u",
                                h.frame_len, h.msg_len);
    *out = h;
    return PETREL_OK;
}
