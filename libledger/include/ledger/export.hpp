// ledger/export.hpp — LEDGER_EXPORT: what libledger.so exports. The library is built with every
// symbol hidden by default; the public API (these headers' classes and functions, and c.h) is
// marked with this, so nothing internal can be linked against by accident.
#pragma once

#ifndef LEDGER_EXPORT
#if defined(__GNUC__)
#define LEDGER_EXPORT __attribute__((visibility("default")))
#else
#define LEDGER_EXPORT
#endif
#endif
