/* Reading an HTTP/1.x head a word at a time (eight bytes in one register, the first in the lowest
 * byte), one rule for both objects: the capture reads the heads a target receives, ctxprop the
 * ones it sends. Which header a line names, and a Content-Length value. */
#ifndef SEAM_HTTP_HEAD_H
#define SEAM_HTTP_HEAD_H

#include <linux/types.h>

#define SEAM_ONES 0x0101010101010101ULL
#define SEAM_HIGHS (SEAM_ONES * 0x80)

/* Eight bytes from p in one load. A byte array's address tells the compiler it may be unaligned,
 * and it then loads byte by byte (eight loads and fourteen shifts and ors for one word); hidden
 * behind an empty asm, it is one load, which the JITs and the verifier take unaligned. */
static __always_inline __u64 seam_load8(const void *p)
{
	asm volatile("" : "+r"(p));
	return *(const __u64 *)p;
}

/* Stores w as eight bytes at p in one store, for the same reason. */
static __always_inline void seam_store8(void *p, __u64 w)
{
	asm volatile("" : "+r"(p));
	*(__u64 *)p = w;
}

/* Four bytes, likewise. */
static __always_inline __u32 seam_load4(const void *p)
{
	asm volatile("" : "+r"(p));
	return *(const __u32 *)p;
}

static __always_inline void seam_store4(void *p, __u32 w)
{
	asm volatile("" : "+r"(p));
	*(__u32 *)p = w;
}

/* Whether any byte of w is c. */
static __always_inline int seam_has_byte(__u64 w, __u8 c)
{
	__u64 x = w ^ (SEAM_ONES * c);
	return ((x - SEAM_ONES) & ~x & SEAM_HIGHS) != 0;
}

/* Per byte of w, its top bit where the byte is c. Exact for every byte: no carry crosses into
 * the next one (seam_has_byte's borrow may mark a byte after a match). */
static __always_inline __u64 seam_bytes_eq(__u64 w, __u8 c)
{
	__u64 x = w ^ (SEAM_ONES * c);
	__u64 low7 = SEAM_ONES * 0x7f;
	return ~(((x & low7) + low7) | x | low7);
}

/* Where in its word the lowest byte marked in m is (0-7): m non-zero, only top bits set. The
 * marked bit, moved to the byte's lowest, times 0x0001…07 leaves the byte's index on top. */
static __always_inline __u32 seam_first_marked(__u64 m)
{
	return (__u32)((((m & -m) >> 7) * 0x0001020304050607ULL) >> 56);
}

/* Per byte of w, its top bit where first <= byte <= last (1 <= first, last <= 127). Exact for
 * every byte: no borrow or carry crosses into the next one. */
static __always_inline __u64 seam_bytes_in(__u64 w, __u8 first, __u8 last)
{
	__u64 x = w & (SEAM_ONES * 0x7f);
	return (SEAM_ONES * (127 + last + 1) - x) & ~w & (x + SEAM_ONES * (127 - (first - 1))) &
	       SEAM_HIGHS;
}

enum seam_header {
	SEAM_HDR_OTHER = 0,
	SEAM_HDR_TRACEPARENT = 1,       /* its value from SEAM_TRACEPARENT_VALUE bytes in */
	SEAM_HDR_CONTENT_LENGTH = 2,    /* its value from SEAM_CONTENT_LENGTH_VALUE bytes in */
	SEAM_HDR_TRANSFER_ENCODING = 3, /* the body's end is in the body */
	SEAM_HDR_UPGRADE = 4,           /* another protocol follows */
};
#define SEAM_TRACEPARENT_VALUE 12    /* "traceparent:" */
#define SEAM_CONTENT_LENGTH_VALUE 15 /* "content-length:" */

/* Which header a line names, from its first 24 bytes as three words: letters in any case (their
 * 0x20 bit set before comparing), the '-' and ':' between them exactly. */
static __always_inline int seam_header_of(__u64 w0, __u64 w1, __u64 w2)
{
	if ((w0 | 0x2020202020202020ULL) == 0x7261706563617274ULL /* "tracepar" */ &&
	    ((w1 | 0x202020ULL) & 0xffffffffULL) == 0x3a746e65ULL /* "ent:" */)
		return SEAM_HDR_TRACEPARENT;
	if ((w0 | 0x0020202020202020ULL) == 0x2d746e65746e6f63ULL /* "content-" */ &&
	    ((w1 | 0x202020202020ULL) & 0xffffffffffffffULL) == 0x3a6874676e656cULL /* "length:" */)
		return SEAM_HDR_CONTENT_LENGTH;
	if ((w0 | 0x2020202020202020ULL) == 0x726566736e617274ULL /* "transfer" */ &&
	    (w1 | 0x2020202020202000ULL) == 0x6e69646f636e652dULL /* "-encodin" */ &&
	    ((w2 | 0x20) & 0xffff) == 0x3a67 /* "g:" */)
		return SEAM_HDR_TRANSFER_ENCODING;
	if ((w0 | 0x0020202020202020ULL) == 0x3a65646172677075ULL /* "upgrade:" */)
		return SEAM_HDR_UPGRADE;
	return SEAM_HDR_OTHER;
}

/* A Content-Length value, read a byte at a time: blanks, one run of digits, blanks, the line's
 * end. Anything else, or a value past 2^48, and the body's length is unknown. */
enum seam_length_state {
	SEAM_LEN_BEFORE = 0,
	SEAM_LEN_DIGITS = 1,
	SEAM_LEN_AFTER = 2,
	SEAM_LEN_DONE = 3,
	SEAM_LEN_BAD = 4,
};
#define SEAM_LENGTH_MAX_BYTES 32 /* bytes of a value line looked at */

struct seam_length {
	__u64 value;
	__u32 state;
	__u32 pad;
};

/* Feeds the value's next byte; returns 1 once the value is read (SEAM_LEN_DONE) or cannot be. */
static __always_inline int seam_length_feed(struct seam_length *l, __u8 c)
{
	if (c >= '0' && c <= '9' && l->state <= SEAM_LEN_DIGITS) {
		l->state = SEAM_LEN_DIGITS;
		l->value = l->value * 10 + (c - '0');
		if (l->value <= (1ULL << 48))
			return 0;
		l->state = SEAM_LEN_BAD;
		return 1;
	}
	if (c == ' ' || c == '\t') {
		if (l->state == SEAM_LEN_DIGITS)
			l->state = SEAM_LEN_AFTER;
		return 0;
	}
	l->state = (c == '\r' || c == '\n') && l->state != SEAM_LEN_BEFORE ? SEAM_LEN_DONE
									   : SEAM_LEN_BAD;
	return 1;
}

#endif
