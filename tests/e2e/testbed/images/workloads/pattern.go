package main

// The /bytes body is defined as: byte i (counting from 0) equals i % 251.
// 251 is prime, so the period never lines up with power-of-two buffer or
// chunk sizes and a dropped, duplicated or reordered block changes the
// checksum. In Python: bytes(range(251)) repeated and cut to n bytes.
const patternPeriod = 251

// patternBlock is a whole number of periods (~1 MiB), so consecutive writes
// of it continue the pattern without any per-byte work.
var patternBlock = func() []byte {
	b := make([]byte, patternPeriod*4096)
	for i := range b {
		b[i] = byte(i % patternPeriod)
	}
	return b
}()
