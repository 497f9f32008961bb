//! virtio-drivers' view of our memory: identity mapped, so physical = virtual, and DMA
//! memory comes from a static pool that is never returned (queues are set up once).
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

const POOL_PAGES: usize = 64;

#[repr(C, align(4096))]
struct Pool([u8; POOL_PAGES * PAGE_SIZE]);

static mut POOL: Pool = Pool([0; POOL_PAGES * PAGE_SIZE]);
static NEXT_PAGE: AtomicUsize = AtomicUsize::new(0);

pub struct IdentityHal;

// SAFETY: memory is identity mapped and the pool hands out each page once.
unsafe impl Hal for IdentityHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let first = NEXT_PAGE.fetch_add(pages, Ordering::Relaxed);
        assert!(first + pages <= POOL_PAGES, "virtio DMA pool exhausted");
        // SAFETY: in bounds (checked above), and handed out only once.
        let ptr = unsafe { core::ptr::addr_of_mut!(POOL.0).cast::<u8>().add(first * PAGE_SIZE) };
        (ptr as PhysAddr, NonNull::new(ptr).unwrap())
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, _vaddr: NonNull<u8>, _pages: usize) -> i32 {
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).unwrap()
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.cast::<u8>().as_ptr() as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}
