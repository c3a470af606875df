/* A stand-in for Karapace's protopacelib (Go, protobuf support) where no Go >= 1.21 is at hand.
 * Karapace loads it at import and sets these symbols' signatures; only protobuf schemas call it, and
 * Voicenote registers Avro schemas only. tests/karapace_venv.sh builds it, and says so. */
void *FormatSchema(void) { return 0; }
char *CheckCompatibility(void) { return "protopacelib stub: protobuf is not supported in this build"; }
void FreeResult(void) {}
