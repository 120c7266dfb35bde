//! kconfig
