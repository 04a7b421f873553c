/* SPDX-License-Identifier: GPL-2.0 */
/* rmirror C shim: kernel helpers that are static inline or macros (so Rust cannot call them), and the
 * fixed C tables (block_device_operations, sysfs attribute callbacks) that call back into the Rust
 * bindings layer (rust/driver/bindings/). Keep in sync with bindings/ffi.rs. */
#ifndef RMIRROR_SHIM_H
#define RMIRROR_SHIM_H
#include <linux/types.h>
#include <linux/blk_types.h>
#include <linux/spinlock_types.h>

struct bio;
struct block_device;
struct file;
struct socket;
struct task_struct;
struct rmirror_disk;
struct rmirror_bioset;

/* Implemented in bindings/disk.rs; `priv` is the gendisk's private_data (opaque here). */
void rmirror_rs_disk_submit_bio(void *priv, struct bio *bio);
int rmirror_rs_disk_open(void *priv);
void rmirror_rs_disk_mark_removing(void *priv);
ssize_t rmirror_rs_disk_show(void *priv, unsigned int attr, char *page);
ssize_t rmirror_rs_disk_store(void *priv, unsigned int attr, const char *buf, size_t len);

/* One sysfs attribute of a disk's group (index = position in the array). */
struct rmirror_attr_desc {
	const char *name;
	bool writable;
};

/* Disks and backing devices. */
struct rmirror_disk *rmirror_disk_create(void *priv, const char *name, struct block_device *backing,
					 sector_t capacity, unsigned int max_sectors,
					 const char *group, const struct rmirror_attr_desc *attrs,
					 unsigned int nattrs);
void rmirror_disk_destroy(struct rmirror_disk *d);
int rmirror_disk_begin_remove(struct rmirror_disk *d);
void rmirror_disk_open_lock(struct rmirror_disk *d);
void rmirror_disk_open_unlock(struct rmirror_disk *d);
unsigned int rmirror_disk_openers(struct rmirror_disk *d);
sector_t rmirror_bdev_nr_sectors(struct block_device *bdev);
struct file *rmirror_bdev_open_excl(const char *path, void *holder);

/* Bios: bio sets with front-padded clones, remapping, completion. */
struct rmirror_bioset *rmirror_bioset_create(unsigned int front_pad);
void rmirror_bioset_drain(struct rmirror_bioset *rbs);
void rmirror_bioset_destroy(struct rmirror_bioset *rbs);
struct bio *rmirror_clone_alloc(struct bio *orig, struct block_device *bdev,
				struct rmirror_bioset *rbs, bio_end_io_t *end_io);
void rmirror_clone_free(struct bio *clone);
void rmirror_bio_remap(struct bio *bio, struct block_device *bdev);
void rmirror_bio_submit(struct bio *bio);
bool rmirror_acct_start(struct bio *bio, unsigned long *start);
void rmirror_acct_end(struct bio *bio, unsigned long start);
void rmirror_bio_endio(struct bio *bio, u8 status);
size_t rmirror_bio_copy_to(struct bio *bio, void *buf, size_t len);
size_t rmirror_bio_copy_from(struct bio *bio, const void *buf, size_t len);
int rmirror_write_sync(struct block_device *bdev, sector_t sector, const void *buf, size_t len,
		       bool preflush, bool fua);
int rmirror_write_async(struct block_device *bdev, sector_t sector, const void *buf, size_t len, bool preflush,
			bool fua, bio_end_io_t *end_io, void *private);
u8 rmirror_buf_bio_done(struct bio *bio, void **private);
int rmirror_read_sync(struct block_device *bdev, sector_t sector, void *buf, size_t len);

/* Kernel TCP sockets; addresses and ports in host byte order. */
int rmirror_sock_listen(u32 addr, u16 port, struct socket **res);
int rmirror_sock_accept(struct socket *lsock, struct socket **res);
int rmirror_sock_connect(u32 addr, u16 port, struct socket **res);
int rmirror_sock_send(struct socket *sock, const void *buf, size_t len, bool more);
int rmirror_sock_send_bio(struct socket *sock, struct bio *bio, unsigned int skip, bool more, bool lend);
int rmirror_sock_recv(struct socket *sock, void *buf, size_t len);
void rmirror_sock_shutdown(struct socket *sock);
void rmirror_sock_abort(struct socket *sock);
void rmirror_sock_release(struct socket *sock);
int rmirror_sock_peer(struct socket *sock, u32 *addr, u16 *port);
void rmirror_sock_set_rcvtimeo(struct socket *sock, unsigned int ms);
void rmirror_sock_set_sndbuf(struct socket *sock, unsigned int bytes);

/* Kernel threads, fault injection, locks, allocation scopes. */
void rmirror_fault_init(void);
void rmirror_fault_exit(void);
struct task_struct *rmirror_thread_start(int (*fn)(void *), void *data, const char *name);
int rmirror_thread_stop(struct task_struct *task);
unsigned long rmirror_spin_lock_irqsave(spinlock_t *lock);
bool rmirror_spin_trylock_irqsave(spinlock_t *lock, unsigned long *flags);
void rmirror_spin_unlock_irqrestore(spinlock_t *lock, unsigned long flags);
bool rmirror_module_get(void);
void rmirror_module_put(void);
unsigned int rmirror_noio_save(void);
void rmirror_noio_restore(unsigned int flags);
#endif
