/* SPDX-License-Identifier: MIT */
/*
 * nsq_snappy.h - the snappy framing ("stream") format nsqd speaks after a
 * negotiated snappy upgrade (docs/nsq-protocol.md section 6.4), sans-I/O,
 * internal.
 *
 * A stream is the 10-byte stream identifier chunk, then chunks of
 * [type][3-byte LE length][payload].  Data chunks (compressed 0x00,
 * uncompressed 0x01) carry the masked CRC-32C (LE) of their uncompressed
 * bytes, at most SL_SNAPPY_BLOCK_MAX of them.  Padding (0xFE) and the
 * reserved skippable types (0x80-0xFD) are skipped; 0x02-0x7F are errors.
 *
 * Encoding: sl_snappy_enc_chunk() turns up to SL_SNAPPY_BLOCK_MAX bytes
 * into one data chunk (compressed when that saves at least 1/8, like Go's
 * writer, otherwise stored).  The caller writes SL_SNAPPY_STREAM_ID once
 * before the first chunk.  Decoding: sl_snappy_dec_chunk() takes the bytes
 * received so far and decodes the chunk at their start, or says it needs
 * more; the caller keeps the undecoded rest (like sl_nsq_frame()).
 *
 * No allocation; the decoder's only state is struct sl_snappy_dec (whether
 * the identifier was seen, and the last error's text).  One decoder per
 * stream, used by one thread at a time; everything else is stateless.
 */
#ifndef SL_PROTO_NSQ_SNAPPY_H
#define SL_PROTO_NSQ_SNAPPY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <sluice/common.h>

/* FF 06 00 00 "sNaPpY": the first chunk of every stream. */
#define SL_SNAPPY_STREAM_ID     "\xff\x06\x00\x00sNaPpY"
#define SL_SNAPPY_STREAM_ID_LEN 10u

/* Uncompressed bytes one data chunk may hold. */
#define SL_SNAPPY_BLOCK_MAX   65536u
/*
 * Largest chunk payload accepted (Go's reader: 4-byte checksum + the
 * longest snappy encoding of a 64 KiB block, 76 490 bytes).
 */
#define SL_SNAPPY_PAYLOAD_MAX 76494u
/* Chunk header: type + 3-byte length. */
#define SL_SNAPPY_HDR         4u

/* Buffer size sl_snappy_enc_chunk() needs for @n input bytes (always
 * enough, whatever the compressor does). */
size_t sl_snappy_enc_bound(size_t n);

/**
 * sl_snappy_enc_chunk() - one data chunk holding @in[0..@n).
 * @n: 1..SL_SNAPPY_BLOCK_MAX.
 * @cap: at least sl_snappy_enc_bound(@n).
 *
 * Returns: the chunk's length, or SLUICE_EINVAL (bad @n, NULL, @cap too
 * small).  Nothing is written on error.
 */
ssize_t sl_snappy_enc_chunk(const uint8_t *in, size_t n, uint8_t *out,
			    size_t cap);

struct sl_snappy_dec {
	bool started;    /* the stream identifier was seen */
	const char *why; /* static text of the last error, or NULL */
};

/** sl_snappy_dec_init() - a decoder at the start of a stream. */
void sl_snappy_dec_init(struct sl_snappy_dec *d);

/**
 * sl_snappy_dec_chunk() - decode the chunk at the start of @in[0..@len).
 * @out: receives the chunk's uncompressed bytes; @cap must be at least
 *       SL_SNAPPY_BLOCK_MAX.
 * @out_len: set to the bytes written, 0 for a chunk that carries none
 *           (identifier, padding, skippable).
 *
 * Decides as early as the bytes allow: an unknown type, a missing stream
 * identifier or an oversized length is refused once the 4 header bytes are
 * in.  Never reads at or past @in + @len.
 *
 * Returns: the bytes the chunk occupies (> 0: drop them), 0 when @in holds
 * no complete chunk yet, SLUICE_EPROTO for a malformed stream (d->why says
 * what: bad checksum, corrupt block, ...; the stream cannot be resumed),
 * SLUICE_EINVAL for bad arguments.
 */
ssize_t sl_snappy_dec_chunk(struct sl_snappy_dec *d, const uint8_t *in,
			    size_t len, uint8_t *out, size_t cap,
			    size_t *out_len);

/**
 * sl_snappy_dec_ready() - would sl_snappy_dec_chunk() on @in[0..@len)
 * return anything but 0 (a whole chunk, or a header that is already an
 * error)?  For a poll loop that must know whether buffered bytes make
 * progress without reading.
 */
bool sl_snappy_dec_ready(const struct sl_snappy_dec *d, const uint8_t *in,
			 size_t len);

/* CRC-32C (Castagnoli), continued from @crc (0 to start). */
uint32_t sl_crc32c(uint32_t crc, const void *p, size_t n);
/* The framing format's mask: ((crc >> 15) | (crc << 17)) + 0xA282EAD8. */
uint32_t sl_snappy_mask(uint32_t crc);

#endif /* SL_PROTO_NSQ_SNAPPY_H */
